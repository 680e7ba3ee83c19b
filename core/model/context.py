"""The first fill of ``context_base`` models: each input frame's hole filled from its surroundings.

The authors' network sees its frames with the hole zeroed and must produce every colour of
the fill itself. A ``context_base`` model (``NetConfig.context_base``) instead receives the
hole already filled by Telea's fast-marching inpainting from the frame's own known pixels,
and outputs a residual on it (see core/model/network.py): colour, shading and the edges that
run into the hole start right, and training teaches what to change. Both engines (torch,
ONNX) and the training data apply :func:`prefill` to every frame of such a model (through
:class:`NetworkFrames`), so the network sees the same thing in training and in use.
"""
from __future__ import annotations

import numpy as np

from ..fusion import context_fill

TELEA_RADIUS = 3   # pixels around each hole pixel that Telea's estimate draws on


def prefill(frame: np.ndarray) -> np.ndarray:
    """``frame`` (4, H, W): RGB in [0, 1] with the hole zeroed, then the mask (1 = hole).

    Returns a new float32 array, the hole's RGB filled from the known pixels (float Telea per
    channel; known pixels and the mask channel unchanged). A frame that is all hole gets mid
    grey; one without a hole comes back as a copy.
    """
    out = np.array(frame, dtype=np.float32, copy=True)
    hole = out[3] > 0.5
    if not hole.any():
        return out
    if hole.all():
        out[:3] = 0.5
        return out
    filled = context_fill(out[:3].transpose(1, 2, 0), hole, TELEA_RADIUS).transpose(2, 0, 1)
    out[:3] = np.where(hole, np.clip(filled, 0.0, 1.0), out[:3])
    return out


def with_base(frame: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``frame`` (4, H, W) as above with its hole's RGB taken from ``base`` (3, H, W): the
    target of a ``fused_base`` model, whose hole arrives filled by the shot pipeline's fusion.
    Known pixels and the mask channel unchanged; a new float32 array."""
    out = np.array(frame, dtype=np.float32, copy=True)
    if base.shape != out[:3].shape:
        raise ValueError(f"base must be {out[:3].shape}, got {base.shape}")
    hole = out[3] > 0.5
    out[:3] = np.where(hole, np.clip(base, 0.0, 1.0), out[:3])
    return out


class NetworkFrames:
    """Engine input frames (4, H, W) -> what the network takes: float32, and for a
    ``context_base`` model with the hole prefilled.

    The last frame is remembered by identity: the single-image path hands the same array to
    ``encode_keyframe`` and then to ``fill``, and is prefilled once. (Callers do not change a
    frame after handing it over.)
    """

    def __init__(self, context_base: bool):
        self.context_base = bool(context_base)
        self._last = None          # (input array, its network frame)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if not self.context_base:
            return np.ascontiguousarray(frame, dtype=np.float32)
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        out = prefill(frame)
        self._last = (frame, out)
        return out
