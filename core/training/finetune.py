"""``keyprop finetune``: adapt a model to one shot in a bounded time, self-supervised.

The shot's keyframes are the only clean pictures of what lies behind the mask, so they are
the training targets: a region of one keyframe is hidden (LaMa-style strokes and boxes,
plus the shot's own mask shapes, which are what the model will have to fill) and rebuilt
from the other keyframes and from plate frames (their own masked region hidden as a
reference hole, since it shows the object being removed). Everything happens in the
region and at the working scale the shot pipeline uses (core.roi), with DIS flow exactly
as inference computes it.

BatchNorm statistics are frozen (batches of one or two frames would corrupt them) and the
learning rate is low: the aim is to specialise to the shot's textures and motion, not to
forget what training taught.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .. import color, io
from ..errors import KeypropInputError
from ..model import Provenance, save_checkpoint
from ..roi import mask_bbox, plan_roi, union_bbox
from ..shot import expand, scan
from .data import collate, network_arrays
from .losses import LossWeights, generator_losses
from .loop import evaluate
from .masks import MaskSettings, random_mask

log = logging.getLogger(__name__)

__all__ = ["ShotData", "finetune_model", "finetune_shot"]


class ShotData:
    """A shot's frames in the pipeline's working space: ROI crop, display-referred, working size.

    ``plates[f]``, ``masks[f]`` for every plate frame f; ``keys[f]`` for every keyframe.
    """

    def __init__(self, plates: Dict[int, np.ndarray], masks: Dict[int, np.ndarray], keys: Dict[int, np.ndarray],
                 stride: int = 8, work_res: int = 640):
        if not keys:
            raise KeypropInputError("finetune needs at least one keyframe")
        if len(keys) + len(plates) < 2:
            raise KeypropInputError("finetune needs a second frame (keyframe or plate) to rebuild a keyframe from")
        any_frame = next(iter(keys.values()))
        size = any_frame.shape[:2]
        bbox = union_bbox(mask_bbox(m) for m in masks.values()) or (0, 0, size[0], size[1])
        self.roi = plan_roi(bbox, size, work_res, stride)
        work = lambda img: self.roi.to_work(img)  # noqa: E731
        self.keys = {f: work(k) for f, k in keys.items()}
        self.plates = {f: work(p) for f, p in plates.items() if f not in keys}
        self.masks = {f: (work(m) > 0).astype(np.float32) for f, m in masks.items()}

    @property
    def shape(self):
        return next(iter(self.keys.values())).shape[:2]


def _display_rgb(image: io.Image) -> np.ndarray:
    pixels = image.pixels
    rgb = np.repeat(pixels[:, :, :1], 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
    if color.is_linear_by_default(image.format):
        rgb = color.to_display(rgb)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def read_shot(plate: str, mask: str, keys: str, stride: int = 8, work_res: int = 640) -> ShotData:
    """Read a shot by patterns (``%04d`` or ``####``); frames present under ``keys`` are keyframes."""
    plate_frames, key_frames = scan(plate), scan(keys)
    if not plate_frames:
        raise KeypropInputError("no plate frames found", plate)
    if not key_frames:
        raise KeypropInputError("no keyframes found", keys)
    plates, masks = {}, {}
    for f in plate_frames:
        path = expand(mask, f)
        try:
            masks[f] = io.read_mask(path)
        except KeypropInputError:
            if not scan(mask):
                raise KeypropInputError("no mask frames found", mask) from None
            raise
        plates[f] = _display_rgb(io.read_image(expand(plate, f)))
        if masks[f].shape != plates[f].shape[:2]:
            raise KeypropInputError(f"mask is {masks[f].shape[1]}x{masks[f].shape[0]}, plate frame {f} is "
                                    f"{plates[f].shape[1]}x{plates[f].shape[0]}", path)
    keyframes = {f: _display_rgb(io.read_image(expand(keys, f))) for f in key_frames}
    return ShotData(plates, masks, keyframes, stride, work_res)


def _crop(image, y, x, size):
    return image[y:y + size, x:x + size]


def make_shot_example(shot: ShotData, rng: np.random.Generator, size: int, n_refs: int = 2,
                      mask_settings: MaskSettings = MaskSettings()) -> Dict[str, np.ndarray]:
    """One example: a keyframe with a hidden region, references from the rest of the shot."""
    h, w = shot.shape
    size = min(size, h - h % 8, w - w % 8)
    key_ids = sorted(shot.keys)
    target_id = key_ids[int(rng.integers(len(key_ids)))]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    target = _crop(shot.keys[target_id], y, x, size)
    hole = random_mask((size, size), rng, mask_settings)
    if shot.masks and rng.random() < 0.5:  # the shot's own mask shapes, from a random frame
        shape_from = list(shot.masks)[int(rng.integers(len(shot.masks)))]
        hole = np.maximum(hole, _crop(shot.masks[shape_from], y, x, size))
    # References: the nearest frames in time first (other keyframes and plates), a random pick of the rest.
    pool = [(abs(f - target_id), "key", f) for f in key_ids if f != target_id] + \
           [(abs(f - target_id), "plate", f) for f in shot.plates]
    pool.sort()
    pool = pool[: max(n_refs * 3, n_refs)]
    picks = [pool[i] for i in sorted(rng.choice(len(pool), size=min(n_refs, len(pool)), replace=False))]
    while len(picks) < n_refs:  # a one-reference shot: repeat
        picks.append(picks[-1])
    refs, ref_masks = [], []
    for _, kind, f in picks:
        if kind == "key":
            refs.append(_crop(shot.keys[f], y, x, size))
            ref_masks.append(np.zeros((size, size), np.float32))
        else:
            refs.append(_crop(shot.plates[f], y, x, size))
            ref_masks.append(_crop(shot.masks.get(f, np.zeros((h, w), np.float32)), y, x, size))
    plate = target * (1 - hole[:, :, None])  # as the pipeline hands the target to flow
    ref_plates = [r * (1 - m[:, :, None]) for r, m in zip(refs, ref_masks)]
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return dict(target=f32(target), mask=f32(hole), plate=f32(plate), refs=f32(np.stack(refs)),
                ref_masks=f32(np.stack(ref_masks)), ref_plates=f32(np.stack(ref_plates)))


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune_model(model, shot: ShotData, minutes: float, size: int = 192, lr: float = 5e-5, batch: int = 2,
                   device: str = "cpu", seed: int = 0, max_steps: Optional[int] = None, n_refs: int = 2,
                   val_count: int = 4, progress: Optional[Callable[[dict], None]] = None):
    """Adapt ``model`` in place; returns {'steps', 'wall_s', 'psnr_before', 'psnr_after'}."""
    progress = progress or (lambda e: None)
    rng_val = np.random.default_rng([seed, 1])
    prefill = model.cfg.context_base
    val = [collate([network_arrays(make_shot_example(shot, rng_val, size, n_refs), prefill)]) for _ in range(val_count)]
    model.to(device)
    before = evaluate(model, val, device)["psnr"]
    progress({"message": f"held-out keyframe regions before: in-mask PSNR {before:.2f} dB"})
    rng = np.random.default_rng([seed, 2])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99))
    weights = LossWeights()
    start, steps = time.time(), 0
    model.train()
    _freeze_batchnorm(model)
    while time.time() - start < minutes * 60 and (max_steps is None or steps < max_steps):
        b = collate([network_arrays(make_shot_example(shot, rng, size, n_refs), prefill) for _ in range(batch)])
        b = {k: v.to(device) for k, v in b.items()}
        pred = model(b["input"], b["srcs"], b["flows"], b["flow_errs"])
        terms = generator_losses(pred, b["target"], b["mask"], weights)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % 10 == 0:
            progress({"message": f"step {steps}: loss {float(terms['total'].detach()):.4f}, "
                                 f"{(time.time() - start) / steps:.2f} s/step"})
    model.eval()
    after = evaluate(model, val, device)["psnr"]
    progress({"message": f"held-out keyframe regions after {steps} steps: in-mask PSNR {after:.2f} dB"})
    return {"steps": steps, "wall_s": time.time() - start, "psnr_before": before, "psnr_after": after}


def finetune_shot(model: str, plate: str, mask: str, keys: str, out: str, minutes: float = 5.0, size: int = 192,
                  lr: float = 5e-5, device: str = "auto", seed: int = 0, max_steps: Optional[int] = None,
                  progress=None) -> dict:
    """Read the shot, adapt the model for at most ``minutes``, write it to ``out`` (keyprop format)."""
    from ..runtime import load_model, pick_device

    if minutes <= 0:
        raise KeypropInputError(f"--minutes must be positive, got {minutes}")
    if size < 64 or size % 8:
        raise KeypropInputError(f"--size must be a multiple of 8 and at least 64, got {size}")
    device = pick_device(device)
    torch.manual_seed(seed)
    net = load_model(model)
    shot = read_shot(plate, mask, keys, net.cfg.stride)
    result = finetune_model(net, shot, minutes, size, lr, device=device, seed=seed, max_steps=max_steps,
                            progress=progress)
    base = getattr(net, "provenance", None) or Provenance()
    provenance = Provenance(origin="keyprop-finetune", licence=base.licence,
                            data=f"{base.data} + self-supervised fine-tune on shot {plate}".strip(" +"),
                            steps=base.steps + result["steps"],
                            notes=f"fine-tuned from {getattr(net, 'model_path', model)} for {result['steps']} steps "
                                  f"({result['wall_s']:.0f} s); held-out keyframe PSNR {result['psnr_before']:.2f} -> "
                                  f"{result['psnr_after']:.2f} dB",
                            extra={"base_origin": base.origin, "finetune_steps": result["steps"]})
    save_checkpoint(net.cpu(), out, preset=getattr(net, "preset", None), provenance=provenance)
    return result
