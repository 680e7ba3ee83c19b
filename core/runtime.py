"""Engines: one small interface the shot pipeline calls, with a PyTorch implementation here.

An engine runs the network on prepared tensors (the pipeline does files, colour, ROI and
flow). Its two calls match the keyframe cache: ``encode_keyframe`` once per keyframe,
``fill`` once per target against the handles of the keyframes that serve it.

Array conventions (numpy float32, channels first, one frame, H and W multiples of
``engine.stride``):

- frame ``(4, H, W)``: display-referred RGB in [0, 1] with the hole set to 0, then the
  hole mask (1 = fill).
- flows ``(T, 2, H, W)``: per keyframe, pixel displacement (x, y) at which to sample the
  keyframe for each target pixel; flow_errs ``(T, 1, H, W)`` their consistency error.
- ``fill`` returns ``(3, H, W)`` RGB in [0, 1], the network's output for every pixel
  (the pipeline composites it inside the mask only).

The ONNX Runtime engine (export/) implements the same interface. Layers import downward
only, so this module never imports export/: ``create_engine`` looks a backend up in a small
registry (``register_backend``); one of a higher layer that nobody registered ('onnx',
export/engine.py) is named, as data, in ``_KNOWN_BACKENDS`` and imported on first use.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch

from .model import KeyframeCache, KeyPropNet, create_model, load_checkpoint, prepare_for_inference
from .model.context import NetworkFrames, with_base

log = logging.getLogger(__name__)


class KeyHandle(Protocol):
    """What an engine returns for one encoded keyframe; opaque to the pipeline."""

    size: tuple


class Engine(Protocol):
    name: str            # 'torch' or 'onnx'
    device: str          # 'cpu' or 'cuda'
    stride: int          # H and W must be multiples of this
    model_info: Dict[str, Any]  # preset, origin, hash: said to the user and written in metadata

    def encode_keyframe(self, frame: np.ndarray) -> KeyHandle: ...

    def fill(self, target: np.ndarray, keys: Sequence[KeyHandle], flows: np.ndarray,
             flow_errs: np.ndarray, base: Optional[np.ndarray] = None) -> np.ndarray: ...
    # ``base`` (3, H, W): the fused fill a ``fused_base`` model corrects (its hole's RGB).


def file_hash(path: Union[str, os.PathLike], length: int = 12) -> str:
    """Short sha256 of a file, to name a model in logs, metadata and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def default_model_path() -> Path:
    """The model file shipped with keyprop (see models/README.md)."""
    return Path(__file__).resolve().parent.parent / "models" / "default.pt"


def resolve_model(spec: Optional[str]) -> Path:
    """``None``/'default' -> the shipped model; otherwise a path to a keyprop .pt file."""
    if spec in (None, "", "default"):
        return default_model_path()
    return Path(spec).expanduser()


def load_model(spec: Optional[str]) -> KeyPropNet:
    """A model from a path or 'default', or a preset name with random weights ('preset:NAME', for tests)."""
    if spec and spec.startswith("preset:"):
        # Seeded: every process (farm chunk, worker) gets the same random-weight model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return create_model(spec.split(":", 1)[1])
    path = resolve_model(spec)
    model = load_checkpoint(path)
    model.model_hash = file_hash(path)
    model.model_path = str(path)
    return model


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return device


@dataclass
class TorchKeyHandle:
    cache: KeyframeCache

    @property
    def size(self):
        return self.cache.size


class TorchEngine:
    """Runs a KeyPropNet in PyTorch (inference copy: BatchNorm folded, channels_last on CPU)."""

    name = "torch"

    def __init__(self, model: KeyPropNet, device: str = "auto", threads: Optional[int] = None):
        self.device = pick_device(device)
        if threads:
            torch.set_num_threads(int(threads))
        self.model = prepare_for_inference(model, channels_last=self.device == "cpu").to(self.device)
        self.stride = model.cfg.stride
        # Any frame size of whole strides from this side up runs (KeyPropNet.check_size): the
        # pipeline may run the network over part of the working area (ShotFiller._network_fill).
        self.min_side = model.min_side
        self.context_base = model.cfg.context_base   # frames get their hole prefilled first
        self._network_frame = NetworkFrames(self.context_base)
        self.fused_base = model.cfg.fused_base       # fills correct the pipeline's fused fill
        provenance = getattr(model, "provenance", None)
        self.model_info = {
            "preset": getattr(model, "preset", "custom"),
            "origin": getattr(provenance, "origin", "unknown"),
            "hash": getattr(model, "model_hash", None),
            "path": getattr(model, "model_path", None),
            "runs_on": f"torch {self.device.upper()}",
        }

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def _frame(self, frame: np.ndarray) -> torch.Tensor:
        """A (4, H, W) frame as the network takes it (hole prefilled for context_base models)."""
        return self._tensor(self._network_frame(frame))

    def encode_keyframe(self, frame: np.ndarray) -> TorchKeyHandle:
        with torch.inference_mode():
            return TorchKeyHandle(self.model.encode_keyframes(self._frame(frame)[None, None]))

    def fill(self, target: np.ndarray, keys: Sequence[TorchKeyHandle], flows: np.ndarray,
             flow_errs: np.ndarray, base: Optional[np.ndarray] = None) -> np.ndarray:
        if not keys:
            raise ValueError("fill needs at least one keyframe")
        frame = self._frame(target) if base is None else self._tensor(with_base(target, base))
        with torch.inference_mode():
            cache = KeyframeCache.cat([k.cache for k in keys])
            out = self.model.fill(frame[None], cache, self._tensor(flows)[None],
                                  self._tensor(flow_errs)[None])
        return out[0].float().cpu().numpy()


# An engine factory takes create_engine's model/device/threads keywords.
EngineFactory = Callable[..., Engine]

_BACKENDS: Dict[str, EngineFactory] = {}

# Backends of higher layers, by (module relative to this package, factory name): data, not an
# import, so the core does not depend on them; imported the first time they are asked for.
_KNOWN_BACKENDS: Dict[str, Tuple[str, str]] = {
    "onnx": ("..export.engine", "OnnxEngine"),  # optional dependency: onnxruntime
}


def register_backend(name: str, factory: EngineFactory) -> None:
    """Make ``create_engine(name, ...)`` call ``factory(model=..., device=..., threads=...)``."""
    _BACKENDS[name] = factory


def _backend_names() -> list:
    """Every backend create_engine knows: registered ones, then known ones not yet imported."""
    return list(_BACKENDS) + [name for name in _KNOWN_BACKENDS if name not in _BACKENDS]


def _torch_engine(model: Optional[str] = None, device: str = "auto", threads: Optional[int] = None) -> TorchEngine:
    return TorchEngine(load_model(model), device=device, threads=threads)


register_backend("torch", _torch_engine)


def _backend(name: str) -> EngineFactory:
    factory = _BACKENDS.get(name)
    if factory is None and name in _KNOWN_BACKENDS:
        module, attr = _KNOWN_BACKENDS[name]
        factory = getattr(importlib.import_module(module, __package__), attr)
        register_backend(name, factory)
    if factory is None:
        raise ValueError(f"unknown backend {name!r} (expected {' or '.join(_backend_names())})")
    return factory


def create_engine(backend: str = "torch", model: Optional[str] = None, device: str = "auto",
                  threads: Optional[int] = None) -> Engine:
    """The engine for ``--backend`` ('torch' or 'onnx') running ``--model`` on ``--device``."""
    return _backend(backend)(model=model, device=device, threads=threads)
