"""The two exported graphs, cut where the keyframe cache is (see core.model.network).

- **keyframe encoder**: one keyframe ``frame`` (1, 4, H, W) -> the flat list of its cached
  tensors (T = 1), in the order of :func:`cache_names`: for each keyframe block ``i``,
  ``lif{i}`` (1, T, C, h, w) when the model warps keyframes, then ``keys{i}`` and
  ``values{i}`` (1, heads, T * N, d) when it cross-attends; last, ``frames`` (1, T, 4, H, W),
  the keyframe itself, for a ``fused_gate`` model's gate.
- **target filler**: ``target`` (1, 4, H, W), ``flows`` (1, T, 2, H, W), ``flow_errs``
  (1, T, 1, H, W) and the cached tensors of T keyframes -> ``fill`` (1, 3, H, W).

T keyframes are the encoder's outputs joined along T: axis 1 for ``lif*`` and ``frames``, axis 2 for
``keys*`` / ``values*`` (:func:`join_caches`, the same order as ``KeyframeCache.cat``).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import nn

from ..core.model import KeyframeCache, KeyPropNet


def cache_names(model: KeyPropNet) -> List[str]:
    """Names of the cached tensors, in graph order."""
    names = []
    for i in range(model.n_keyframe_blocks):
        if model.cfg.deformable:
            names.append(f"lif{i}")
        if model.cfg.cross_attention:
            names += [f"keys{i}", f"values{i}"]
    if model.cfg.fused_gate:
        names.append("frames")
    return names


def keyframe_axis(name: str) -> int:
    """The axis along which T keyframes are joined in cached tensor ``name``."""
    return 1 if name.startswith("lif") or name == "frames" else 2


def join_caches(names: Sequence[str], per_keyframe: Sequence[Sequence[np.ndarray]]) -> List[np.ndarray]:
    """[keyframe][tensor] arrays (T = 1 each) -> one array per tensor for all T keyframes."""
    if len(per_keyframe) == 1:
        return list(per_keyframe[0])
    return [np.concatenate([k[j] for k in per_keyframe], axis=keyframe_axis(name)) for j, name in enumerate(names)]


def flatten_cache(model: KeyPropNet, cache: KeyframeCache) -> List[torch.Tensor]:
    out = []
    for i in range(model.n_keyframe_blocks):
        if model.cfg.deformable:
            out.append(cache.lifs[i])
        if model.cfg.cross_attention:
            out += list(cache.kv[i])
    if model.cfg.fused_gate:
        out.append(cache.frames)
    return out


def unflatten_cache(model: KeyPropNet, tensors: Sequence[torch.Tensor], size, count) -> KeyframeCache:
    cache, it = KeyframeCache(size=tuple(size), count=count), iter(tensors)
    for _ in range(model.n_keyframe_blocks):
        if model.cfg.deformable:
            cache.lifs.append(next(it))
        if model.cfg.cross_attention:
            cache.kv.append((next(it), next(it)))
    if model.cfg.fused_gate:
        cache.frames = next(it)
    return cache


class KeyframeEncoderGraph(nn.Module):
    """frame (1, 4, H, W) -> cached tensors of that one keyframe."""

    def __init__(self, model: KeyPropNet, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, frame: torch.Tensor):
        cache = self.model.encode_keyframes(frame.to(self.dtype)[:, None])  # (1, T=1, 4, H, W)
        # Graph inputs and outputs stay float32 whatever the compute precision.
        return tuple(t.float() for t in flatten_cache(self.model, cache))


class TargetFillerGraph(nn.Module):
    """target, flows, flow_errs, cached tensors of T keyframes -> fill (1, 3, H, W)."""

    def __init__(self, model: KeyPropNet, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, target: torch.Tensor, flows: torch.Tensor, flow_errs: torch.Tensor, cached: List[torch.Tensor]):
        d = self.dtype
        cache = unflatten_cache(self.model, [t.to(d) for t in cached], target.shape[-2:], flows.shape[1])
        return self.model.fill(target.to(d), cache, flows.to(d), flow_errs.to(d)).float()
