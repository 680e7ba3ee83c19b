"""In-mask quality figures: PSNR, SSIM, flicker and seam, on display-referred [0, 1] images.

"In-mask" means over the pixels to fill only: outside the mask every method returns the
plate, which would dilute every difference. The seam figure looks at the band around the
mask's edge instead (and at the edges between sources inside the fill), where a fill that
is right on average can still show as a visible line.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["psnr_in_mask", "ssim_map", "ssim_in_mask", "flicker", "gradient_error", "border_band",
           "internal_band", "seam", "seam_shot"]

_C1, _C2 = 0.01 ** 2, 0.03 ** 2


def _hole(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, np.float32)
    return (mask[..., 0] if mask.ndim == 3 else mask) > 0.5


def psnr_in_mask(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, peak: float = 1.0) -> float:
    """PSNR (dB) over the masked pixels of (H, W, 3) images; inf when equal, nan for an empty mask."""
    hole = _hole(mask)
    if not hole.any():
        return float("nan")
    err = (np.asarray(pred, np.float64) - np.asarray(truth, np.float64))[hole]
    mse = float(np.mean(err ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak ** 2 / mse)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per pixel (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), mean over channels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + _C1) * (2 * cov + _C2)) / ((mu_a ** 2 + mu_b ** 2 + _C1) * (var_a + var_b + _C2))
    return s.mean(axis=2) if s.ndim == 3 else s


def ssim_in_mask(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the masked pixels; nan for an empty mask."""
    hole = _hole(mask)
    if not hole.any():
        return float("nan")
    return float(ssim_map(pred, truth)[hole].mean())


def flicker(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Temporal instability inside the fill: mean over frame pairs of
    ``| mean|pred_t - pred_t-1| - mean|truth_t - truth_t-1| |`` over the union of both masks.

    Zero when the fill changes from frame to frame exactly as much as the true background
    does (a static fill on a moving shot flickers as little as a flickering one on a static
    shot is stable: both read as wrong).
    """
    values = []
    for t in range(1, len(preds)):
        hole = _hole(masks[t]) | _hole(masks[t - 1])
        if not hole.any():
            continue
        d_pred = np.abs(np.asarray(preds[t], np.float64) - preds[t - 1])[hole].mean()
        d_true = np.abs(np.asarray(truths[t], np.float64) - truths[t - 1])[hole].mean()
        values.append(abs(d_pred - d_true))
    return float(np.mean(values)) if values else float("nan")



def gradient_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel ``|grad pred - grad truth|`` x 100: forward differences in x and y (0 past the
    last column / row), absolute error averaged over the two directions and the channels."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.ndim == 2:
        pred, truth = pred[:, :, None], truth[:, :, None]
    err = np.zeros(pred.shape, np.float64)
    d = pred - truth
    err[:, :-1] += np.abs(d[:, 1:] - d[:, :-1])     # |dx pred - dx truth| = |dx (pred - truth)|
    err[:-1, :] += np.abs(d[1:, :] - d[:-1, :])
    return 100.0 * err.mean(axis=2) / 2.0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def border_band(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Pixels within ``radius`` px of the boundary between mask and non-mask, on both sides
    (the frame's own edge is no boundary)."""
    hole = _hole(mask).astype(np.uint8)
    k = _disk(radius)
    return cv2.dilate(hole, k) > cv2.erode(hole, k)


def internal_band(labels: np.ndarray, mask: Optional[np.ndarray] = None, radius: int = 2) -> np.ndarray:
    """Pixels of the fill within ``radius`` px of a pixel that came from another source.

    ``labels``: (H, W) ints, which source each fill pixel came from. Without ``mask``, the
    fill is where labels >= 0 (-1 outside). With ``mask``, the fill is the hole, and every
    label value >= -1 there counts as a source of its own (keyprop's ``fill_frames(debug=)``
    labels -1 the pixels the network filled, where no warped source showed; values below
    -1, such as its -2 outside the ROI, are ignored).
    """
    labels = np.asarray(labels)
    inside = labels >= 0 if mask is None else (labels >= -1) & _hole(mask)
    band = np.zeros(labels.shape, bool)
    values = np.unique(labels[inside])
    if values.size < 2:
        return band
    k = _disk(radius)
    for v in values:
        this = inside & (labels == v)
        others = (inside & ~this).astype(np.uint8)
        band |= this & (cv2.dilate(others, k) > 0)
    return band


def seam(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, labels: Optional[np.ndarray] = None,
         radius: int = 2) -> Tuple[float, float]:
    """Seam figures of one frame: ``(border, internal)``.

    - border: mean of :func:`gradient_error` (``|grad fill - grad truth|``, forward
      differences in x and y, L1 averaged over x/y and channels, display-referred x 100)
      over the pixels within ``radius`` (2) px of the mask's boundary, both sides. 0 for a
      fill whose edge continues the truth's; a fill offset by a constant inside the mask
      scores the offset's step there. nan for an empty mask.
    - internal: the same gradient error over the pixels within ``radius`` px of the
      boundaries between sources inside the hole, given ``labels`` ((H, W) ints, which source
      each hole pixel came from; see :func:`internal_band`). nan without labels or without
      such a boundary.
    """
    if not _hole(mask).any():
        return float("nan"), float("nan")
    err = gradient_error(pred, truth)
    border = float(err[border_band(mask, radius)].mean())
    internal = float("nan")
    if labels is not None:
        band = internal_band(labels, mask, radius)
        if band.any():
            internal = float(err[band].mean())
    return border, internal


def seam_shot(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], masks: Sequence[np.ndarray],
              labels: Optional[Sequence[Optional[np.ndarray]]] = None) -> Tuple[float, float]:
    """:func:`seam` averaged over the frames (nan-aware): ``(border, internal)``;
    ``labels``: one label map (or None) per frame, or None."""
    values = [seam(p, t, m, None if labels is None else labels[i])
              for i, (p, t, m) in enumerate(zip(preds, truths, masks))]
    border = [b for b, _ in values if np.isfinite(b)]
    internal = [v for _, v in values if np.isfinite(v)]
    return (float(np.mean(border)) if border else float("nan"),
            float(np.mean(internal)) if internal else float("nan"))
