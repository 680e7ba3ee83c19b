"""Training masks in the style of LaMa's generator: irregular thick strokes and boxes.

LaMa (Suvorov et al. 2022) trains inpainting on a mixture of random polyline strokes with
round joints and random axis-aligned rectangles; the guided-inpainting authors reuse that
mixture for the target and, sometimes, for the reference frames. This module draws the same
kinds of shapes, with sizes given as fractions of the crop so one setting serves every crop
size (LaMa's absolute pixel sizes were tuned for 256-512 px crops).

All functions take a ``numpy.random.Generator`` and return float32 ``(H, W)`` masks with
1 = hole.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["MaskSettings", "irregular_strokes", "boxes", "random_mask", "blob"]


@dataclass(frozen=True)
class MaskSettings:
    """Shape statistics, relative to the crop's side (LaMa's defaults divided by 256)."""

    stroke_prob: float = 0.8      # chance to draw strokes (boxes are drawn with box_prob; at least one kind)
    box_prob: float = 0.5
    max_strokes: int = 4          # LaMa: 1..5 strokes
    max_vertices: int = 6
    max_angle: float = 4.0        # radians of turn between segments (LaMa's max_angle)
    max_len: float = 0.45         # segment length (fraction of the side)
    max_width: float = 0.22       # stroke width
    min_width: float = 0.03
    max_boxes: int = 3
    box_min: float = 0.12
    box_max: float = 0.5
    min_cover: float = 0.03       # redraw masks that hide almost nothing...
    max_cover: float = 0.5        # ...or more than half the frame


def irregular_strokes(shape, rng: np.random.Generator, s: MaskSettings = MaskSettings()) -> np.ndarray:
    """Random polylines with round joints, LaMa's 'irregular' masks."""
    h, w = shape
    side = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, s.max_strokes + 1)):
        x, y = rng.integers(0, w), rng.integers(0, h)
        for _ in range(rng.integers(1, s.max_vertices + 1)):
            angle = rng.uniform(0, s.max_angle) + (np.pi if rng.random() < 0.5 else 0.0)
            length = rng.uniform(0.05, s.max_len) * side
            width = max(1, int(rng.uniform(s.min_width, s.max_width) * side))
            nx = int(np.clip(x + length * np.sin(angle), 0, w - 1))
            ny = int(np.clip(y + length * np.cos(angle), 0, h - 1))
            cv2.line(mask, (int(x), int(y)), (nx, ny), 1, width)
            cv2.circle(mask, (nx, ny), width // 2, 1, -1)
            x, y = nx, ny
    return mask.astype(np.float32)


def boxes(shape, rng: np.random.Generator, s: MaskSettings = MaskSettings()) -> np.ndarray:
    """Random axis-aligned rectangles, LaMa's 'box' masks."""
    h, w = shape
    side = min(h, w)
    mask = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, s.max_boxes + 1)):
        bw = int(rng.uniform(s.box_min, s.box_max) * side)
        bh = int(rng.uniform(s.box_min, s.box_max) * side)
        x0 = rng.integers(0, max(1, w - bw))
        y0 = rng.integers(0, max(1, h - bh))
        mask[y0:y0 + bh, x0:x0 + bw] = 1.0
    return mask


def random_mask(shape, rng: np.random.Generator, s: MaskSettings = MaskSettings(), tries: int = 8) -> np.ndarray:
    """A mixture of strokes and boxes whose coverage lies in [min_cover, max_cover]."""
    mask = None
    for _ in range(tries):
        mask = np.zeros(shape, np.float32)
        use_strokes = rng.random() < s.stroke_prob
        use_boxes = rng.random() < s.box_prob or not use_strokes
        if use_strokes:
            mask = np.maximum(mask, irregular_strokes(shape, rng, s))
        if use_boxes:
            mask = np.maximum(mask, boxes(shape, rng, s))
        if s.min_cover <= mask.mean() <= s.max_cover:
            return mask
    return mask


def blob(shape, rng: np.random.Generator, size: float = 0.3) -> np.ndarray:
    """A soft-edged random blob (a smoothed stroke mask) filling about ``size`` of the side.

    Used as the alpha of a foreground layer (parallax) and as the shape of moving
    occluders in the benchmark.
    """
    h, w = shape
    side = min(h, w)
    m = np.zeros((h, w), np.uint8)
    cx, cy = w / 2, h / 2
    n = rng.integers(5, 10)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.5, 1.0, n) * size * side / 2
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
    cv2.fillPoly(m, [pts], 1)
    k = max(3, int(side * 0.02) | 1)
    return cv2.GaussianBlur(m.astype(np.float32), (k, k), 0)
