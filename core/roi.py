"""Region of interest: where the work happens, and at what resolution.

The network runs on the union of the shot's mask bounding boxes plus a context margin
(the ROI), scaled so its long side is at most the working resolution, with both sides
multiples of the network's stride. A 40-pixel wire on a 4K plate costs a small
inference, not a 4K one. The ROI is the same for every frame of the shot (it is computed
from all its masks), so keyframes are encoded once, and a farm chunk sees exactly the
ROI a full run sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import cv2
import numpy as np

# Smallest working side: the latent grid (16 x 16 over a 1/8 map) needs about 72 px,
# and context below ~128 px gives the network too little to go on.
MIN_WORK_SIDE = 128


def mask_bbox(mask: np.ndarray, threshold: float = 0.0) -> Optional[Tuple[int, int, int, int]]:
    """(y0, x0, y1, x1), end-exclusive, of pixels > threshold; None for an empty mask."""
    rows = np.flatnonzero((mask > threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((mask > threshold).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def union_bbox(boxes: Iterable[Optional[Tuple[int, int, int, int]]]):
    out = None
    for b in boxes:
        if b is None:
            continue
        out = b if out is None else (min(out[0], b[0]), min(out[1], b[1]), max(out[2], b[2]), max(out[3], b[3]))
    return out


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


@dataclass(frozen=True)
class ROI:
    """A crop of the plate (y0:y1, x0:x1) and the working size (wh, ww) it is resized to."""

    y0: int
    x0: int
    y1: int
    x1: int
    work_h: int
    work_w: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def scale(self) -> float:
        """Working pixels per plate pixel along the more reduced axis (< 1: downscaled).

        The axes may differ: a tall, thin ROI is reduced along its height but kept at
        MIN_WORK_SIDE across (at or above plate resolution).
        """
        return min(self.scale_y, self.scale_x)

    @property
    def scale_y(self) -> float:
        return self.work_h / self.height

    @property
    def scale_x(self) -> float:
        return self.work_w / self.width

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0:self.y1, self.x0:self.x1]

    def to_work(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Crop a full frame to the ROI and resize it to the working size."""
        return self.resize_to_work(self.crop(image), nearest)

    def resize_to_work(self, crop: np.ndarray, nearest: bool = False) -> np.ndarray:
        """Resize an ROI-sized crop to the working size (area filter down, linear up)."""
        if crop.shape[:2] != (self.height, self.width):
            raise ValueError(f"expected an ROI crop of {self.width}x{self.height}, got {crop.shape[1]}x{crop.shape[0]}")
        if crop.shape[:2] == (self.work_h, self.work_w):
            return np.ascontiguousarray(crop)
        down = self.work_h < crop.shape[0]
        interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if down else cv2.INTER_LINEAR)
        return cv2.resize(np.ascontiguousarray(crop), (self.work_w, self.work_h), interpolation=interp)

    def to_plate(self, image: np.ndarray) -> np.ndarray:
        """Resize a working-size image back to the ROI's plate size."""
        if image.shape[:2] == (self.height, self.width):
            return image
        return cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_CUBIC)

    def flow_to_plate(self, flow: np.ndarray) -> np.ndarray:
        """Resize a working-size (h, w, 2) pixel flow to plate size, rescaling the vectors."""
        up = self.to_plate(flow)
        sx, sy = self.width / self.work_w, self.height / self.work_h
        return (up * np.array([sx, sy], dtype=np.float32)).astype(np.float32)


def plan_roi(bbox, frame_size: Tuple[int, int], work_res: int, stride: int = 8, margin: float = 0.5,
             min_margin: int = 32) -> ROI:
    """ROI around ``bbox`` (y0, x0, y1, x1) in a frame of ``frame_size`` (H, W).

    The box grows by ``margin`` of its size on each side (at least ``min_margin`` px) for
    context, then to at least MIN_WORK_SIDE (or the frame) per side, clamped to the frame.
    The working size keeps the aspect ratio with the long side at most ``work_res``.
    """
    h, w = frame_size
    y0, x0, y1, x1 = bbox
    grow_y = max(min_margin, int(margin * (y1 - y0)))
    grow_x = max(min_margin, int(margin * (x1 - x0)))
    y0, y1 = max(0, y0 - grow_y), min(h, y1 + grow_y)
    x0, x1 = max(0, x0 - grow_x), min(w, x1 + grow_x)
    y0, y1 = _grow_to(y0, y1, min(MIN_WORK_SIDE, h), h)
    x0, x1 = _grow_to(x0, x1, min(MIN_WORK_SIDE, w), w)
    rh, rw = y1 - y0, x1 - x0
    scale = min(1.0, work_res / max(rh, rw))
    if scale == 1.0:
        # At plate resolution, grow the box to whole strides rather than resample it by a
        # pixel or two (a resize blurs every pixel of the fill); where the frame has no room
        # the box is resized as below.
        y0, y1 = _grow_to(y0, y1, -(-rh // stride) * stride, h)
        x0, x1 = _grow_to(x0, x1, -(-rw // stride) * stride, w)
        rh, rw = y1 - y0, x1 - x0
        scale = min(1.0, work_res / max(rh, rw))
    work_h = max(_round_to(rh * scale, stride), MIN_WORK_SIDE if rh >= MIN_WORK_SIDE else _round_to(rh, stride))
    work_w = max(_round_to(rw * scale, stride), MIN_WORK_SIDE if rw >= MIN_WORK_SIDE else _round_to(rw, stride))
    # Tiny frames (below the network's minimum) are upscaled rather than refused.
    work_h, work_w = max(work_h, MIN_WORK_SIDE), max(work_w, MIN_WORK_SIDE)
    return ROI(y0, x0, y1, x1, work_h, work_w)


def _grow_to(lo: int, hi: int, size: int, limit: int) -> Tuple[int, int]:
    """Widen [lo, hi) symmetrically to at least ``size``, staying inside [0, limit)."""
    missing = size - (hi - lo)
    if missing <= 0:
        return lo, hi
    lo = max(0, lo - missing // 2)
    hi = min(limit, lo + size)
    lo = max(0, hi - size)
    return lo, hi
