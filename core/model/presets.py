"""Preset registry, ``create_model`` and keyprop's own checkpoint format.

Presets are registered by small functions (as timm does): ``paper`` reproduces the
authors' generator exactly (configs/ours.yaml: 47.6 M parameters), ``small`` is for CPU
use, ``test`` is tiny and exists for CI.

Checkpoint format (``.pt``, readable with ``torch.load(weights_only=True)``)::

    {"format": "keyprop-model", "format_version": 1, "keyprop_version": "...",
     "preset": "small", "config": {NetConfig fields}, "provenance": {...},
     "state_dict": {our key names: tensors}}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch

from ..atomic import atomic_write
from .config import NetConfig, Provenance
from .network import KeyPropNet
from .reference import PAPER_REFERENCE_CONFIG, load_strict  # noqa: F401 (PAPER_REFERENCE_CONFIG: re-exported)

CHECKPOINT_FORMAT = "keyprop-model"
CHECKPOINT_FORMAT_VERSION = 1

_REGISTRY: Dict[str, Callable[[], NetConfig]] = {}
_DESCRIPTIONS: Dict[str, str] = {}


def register_preset(fn: Callable[[], NetConfig]) -> Callable[[], NetConfig]:
    """Register ``fn`` (returning a NetConfig) under its name; its docstring describes it."""
    _REGISTRY[fn.__name__] = fn
    _DESCRIPTIONS[fn.__name__] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return fn


@register_preset
def paper() -> NetConfig:
    """The published generator (configs/ours.yaml): 4 FFC two-stream blocks, 512 wide, 1-point warp."""
    return NetConfig.from_reference(PAPER_REFERENCE_CONFIG)


@register_preset
def small() -> NetConfig:
    """CPU preset: 3/8 of the width, 2 blocks, one-point warp; under 1/4 of paper's time."""
    return NetConfig(ngf=24, n_blocks=2, n_cross=2, latent_dim=192, num_heads=8, read_write_heads=8,
                     num_latents_sqrt=16, warp_kernel=1)


@register_preset
def test() -> NetConfig:
    """Tiny preset for tests and CI: seconds to train a few steps."""
    return NetConfig(ngf=8, n_blocks=2, n_cross=1, latent_dim=64, num_heads=4, read_write_heads=4,
                     num_latents_sqrt=4, warp_kernel=3, warp_offset_groups=4)


def list_presets():
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    return _DESCRIPTIONS.get(name, "")


def get_config(name: str) -> NetConfig:
    """The NetConfig of a preset; ValueError naming the known presets for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    return _REGISTRY[name]()


def count_parameters(cfg_or_model: Union[NetConfig, torch.nn.Module]) -> int:
    model = KeyPropNet(cfg_or_model) if isinstance(cfg_or_model, NetConfig) else cfg_or_model
    return sum(p.numel() for p in model.parameters())


def create_model(name: str, checkpoint: Optional[Union[str, os.PathLike]] = None) -> KeyPropNet:
    """Build a preset by name, optionally loading weights (keyprop checkpoint) into it.

    Returns the model in eval mode. A checkpoint of another preset or config raises
    ValueError saying which.
    """
    cfg = get_config(name)
    if checkpoint is None:
        model = KeyPropNet(cfg)
        model.preset = name
        model.provenance = Provenance(origin="random-init")
        return model.eval()
    model = load_checkpoint(checkpoint)
    if model.cfg != cfg:
        raise ValueError(f"{checkpoint}: holds a {model.preset!r} model whose config differs from preset {name!r}")
    return model


def keyprop_version() -> str:
    """keyprop's version, also when core is imported as a top-level package from a checkout."""
    try:
        from importlib.metadata import version

        return version("keyprop")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "0+unknown"


def save_checkpoint(model: KeyPropNet, path: Union[str, os.PathLike], preset: Optional[str] = None,
                    provenance: Optional[Provenance] = None) -> None:
    """Write ``model`` in keyprop's format, atomically (temporary file + rename)."""
    __version__ = keyprop_version()

    provenance = provenance or getattr(model, "provenance", None) or Provenance()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "keyprop_version": __version__,
        "preset": preset or getattr(model, "preset", None) or "custom",
        "config": model.cfg.to_dict(),
        "provenance": provenance.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> KeyPropNet:
    """Read a keyprop checkpoint (``weights_only=True``) into a KeyPropNet in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable keyprop model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a keyprop model file (no '{CHECKPOINT_FORMAT}' format tag)")
    if payload.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path}: model format version {payload['format_version']} is newer than this "
                         f"keyprop understands ({CHECKPOINT_FORMAT_VERSION}); update keyprop")
    cfg = NetConfig.from_dict(payload["config"])
    model = KeyPropNet(cfg)
    load_strict(model, payload["state_dict"], what=str(path))
    model.preset = payload.get("preset", "custom")
    model.provenance = Provenance.from_dict(payload.get("provenance"))
    return model.eval()
