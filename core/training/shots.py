"""Synthetic test shots with ground truth: a camera move over a still picture, a moving
occluder to remove, clean keyframes at the first and last frame.

The quality benchmark (bench/quality.py) and the fine-tuning tests use them. Pictures come
from scikit-image's samples that training holds out (coffee, rocket, chelsea), so a model
is never measured on what it was trained on; without scikit-image a procedural texture
stands in.

Shot kinds (``KINDS``): camera pan, zoom with rotation, exposure change across the shot,
film grain, two-layer parallax, large motion.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import cv2
import numpy as np

from ..color import to_display, to_linear
from .masks import blob
from .sources import load_skimage, procedural_texture

__all__ = ["KINDS", "Shot", "make_shot"]

KINDS = ("pan", "zoom_rotate", "exposure", "grain", "parallax", "large_motion")
# Held-out pictures only (sources.SKIMAGE_HELD_OUT).
_PICTURE = {"pan": "coffee", "zoom_rotate": "rocket", "exposure": "chelsea", "grain": "coffee",
            "parallax": "rocket", "large_motion": "chelsea"}


@dataclass
class Shot:
    kind: str
    plates: List[np.ndarray]   # (H, W, 3) display-referred [0, 1]: what the camera saw, occluder included
    truths: List[np.ndarray]   # the same frames without the occluder
    masks: List[np.ndarray]    # (H, W) 1 = occluder (region to fill)
    keys: List[int]            # clean keyframes (their plate is the truth)

    def frames_for_fill(self) -> List[np.ndarray]:
        """Plates, with the keyframes replaced by their clean version (as an artist delivers them)."""
        return [self.truths[i].copy() if i in self.keys else self.plates[i].copy() for i in range(len(self.plates))]


def _picture(name: str, seed: int) -> np.ndarray:
    pics = load_skimage((name,), max_side=1024) if name else []
    if pics:
        return pics[0]
    return procedural_texture(np.random.default_rng(seed), 640)


def _similarity(cx, cy, scale, angle_deg, tx, ty, w, h):
    """Output pixel -> picture pixel: about the frame centre, scaled, rotated, shifted to (cx + tx, cy + ty)."""
    a = np.deg2rad(angle_deg)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
    out = np.eye(3)
    out[:2, :2] = m
    out[:2, 2] = np.array([cx + tx, cy + ty]) - m @ np.array([w / 2, h / 2])
    return out


def _render(picture, homography, w, h):
    return cv2.warpPerspective(picture, np.linalg.inv(homography), (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)


def make_shot(kind: str, frames: int = 12, size=(240, 320), seed: int = 0) -> Shot:
    """One synthetic shot of ``kind`` (see KINDS): ``frames`` frames of ``size`` (H, W)."""
    if kind not in KINDS:
        raise ValueError(f"unknown shot kind {kind!r}; known: {', '.join(KINDS)}")
    h, w = size
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    picture = _picture(_PICTURE[kind], seed)
    # Fit the picture so the whole move stays inside it (reflection only at extreme moves).
    fit = max(1.6 * w / picture.shape[1], 1.3 * h / picture.shape[0], 1.0)
    if fit > 1.0:
        picture = cv2.resize(picture, None, fx=fit, fy=fit, interpolation=cv2.INTER_CUBIC)
    ph, pw = picture.shape[:2]
    cx, cy = pw / 2, ph / 2
    move = {"pan": (0.25 * w, 0.05 * h), "zoom_rotate": (0.05 * w, 0.0), "exposure": (0.12 * w, 0.03 * h),
            "grain": (0.2 * w, -0.05 * h), "parallax": (0.12 * w, 0.0), "large_motion": (0.6 * w, 0.15 * h)}[kind]
    fg = fg_alpha = None
    if kind == "parallax":
        fg = procedural_texture(np.random.default_rng(seed + 1000), 512)
        fg_alpha = blob((h, w), rng, size=0.8)
    occ_tex = np.clip(rng.random(3) * 0.8 + cv2.GaussianBlur(rng.normal(0, 0.15, (h, w, 3)), (0, 0), 3), 0, 1)
    occ_shape = blob((h, w), rng, size=0.5)
    plates, truths, masks = [], [], []
    for i in range(frames):
        t = i / max(1, frames - 1)
        scale, angle = 1.0, 0.0
        if kind == "zoom_rotate":
            scale, angle = 1.0 + 0.35 * t, 12.0 * t
        if kind == "large_motion":
            angle = 6.0 * t
        view = _similarity(cx, cy, scale, angle, -move[0] / 2 + move[0] * t, -move[1] / 2 + move[1] * t, w, h)
        frame = _render(picture, view, w, h)
        if kind == "parallax":
            # A nearer layer moving three times as fast as the background, in the other direction.
            shift = _similarity(256, 256, 1.0, 0.0, 0.3 * w * (0.5 - t), 0.0, w, h)
            layer = _render(fg, shift, w, h)
            a = cv2.warpAffine(fg_alpha, np.float32([[1, 0, 0.3 * w * (t - 0.5)], [0, 1, 0]]), (w, h))[:, :, None]
            frame = a * layer + (1 - a) * frame
        if kind == "exposure":
            frame = np.clip(to_display(to_linear(frame) * 2.0 ** (1.0 * t - 0.5)), 0, 1)
        if kind == "grain":
            grain = cv2.GaussianBlur(rng.normal(0, 0.04, (h, w, 3)).astype(np.float32), (0, 0), 0.7)
            frame = np.clip(frame + grain, 0, 1)
        truth = np.round(np.clip(frame, 0, 1) * 255).astype(np.float32) / 255
        # The occluder sweeps across the frame (left to right, bobbing), so what it hides in the
        # middle frames is visible in one of the keyframes.
        ox = (-0.25 + 0.5 * t) * w
        oy = 0.08 * h * np.sin(2 * np.pi * t)
        occ = cv2.warpAffine(occ_shape, np.float32([[1, 0, ox], [0, 1, oy]]), (w, h))
        mask = (occ > 0.02).astype(np.float32)
        plate = occ[:, :, None] * occ_tex + (1 - occ[:, :, None]) * truth
        plate = np.round(np.clip(plate, 0, 1) * 255).astype(np.float32) / 255
        plates.append(plate.astype(np.float32))
        truths.append(truth.astype(np.float32))
        masks.append(mask)
    return Shot(kind, plates, truths, masks, [0, frames - 1])


def all_shots(frames: int = 12, size=(240, 320), seed: int = 0) -> Dict[str, Shot]:
    return {k: make_shot(k, frames, size, seed) for k in KINDS}



def save_shot(shot: Shot, folder) -> Dict[str, str]:
    """Write a shot as 8-bit PNG sequences; returns the patterns (plate, mask, keys, truth).

    ``keys`` holds only the keyframes (clean), as ``keyprop run --keys`` expects.
    """
    import os

    from ..io import write_image

    os.makedirs(folder, exist_ok=True)
    patterns = {name: os.path.join(str(folder), f"{name}.%04d.png") for name in ("plate", "mask", "keys", "truth")}
    for i, (plate, truth, mask) in enumerate(zip(shot.plates, shot.truths, shot.masks)):
        write_image(patterns["plate"] % i, truth if i in shot.keys else plate)
        write_image(patterns["truth"] % i, truth)
        write_image(patterns["mask"] % i, np.repeat(mask[:, :, None], 3, axis=2))
        if i in shot.keys:
            write_image(patterns["keys"] % i, truth)
    return patterns
