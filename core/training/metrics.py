"""In-mask quality figures: PSNR, SSIM and flicker, on display-referred [0, 1] images.

"In-mask" means over the pixels to fill only: outside the mask every method returns the
plate, which would dilute every difference.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ["psnr_in_mask", "ssim_map", "ssim_in_mask", "flicker"]

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
