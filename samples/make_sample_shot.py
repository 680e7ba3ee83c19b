#!/usr/bin/env python3
"""Make keyprop's bundled sample shot (samples/shot/): a slow camera pan over a procedural
street scene, with a rig pole and a wire moving across it.

    python samples/make_sample_shot.py            # rewrites samples/shot/

Everything is drawn here (no outside images), seeded, so the shot is reproducible.
Files (8-bit PNG, frames 1001-1024, 384x224):
  plate.####.png   the shot with the rig in it
  mask.####.png    white where the rig is (what keyprop fills)
  keys.####.png    clean keyframes at 1001 and 1024 (the background without the rig)
  truth.####.png   the clean background of every frame (for checking the fill)
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

W, H, FRAMES, FIRST = 384, 224, 24, 1001
PAN = 3.0  # pixels per frame
OUT = Path(__file__).resolve().parent / "shot"


def background(width: int, height: int, rng) -> np.ndarray:
    """A wide strip of street: sky gradient, building facades with windows, pavement."""
    img = np.zeros((height, width, 3), np.float32)
    sky = np.linspace(0.85, 0.55, height)[:, None, None] * np.array([0.75, 0.85, 1.0], np.float32)
    img[:] = sky
    x = 0
    while x < width:
        bw = int(rng.integers(40, 90))
        top = int(rng.integers(20, 90))
        base = np.array(rng.uniform(0.3, 0.8, 3), np.float32)
        img[top:height - 40, x:x + bw] = base
        for wy in range(top + 8, height - 52, 18):
            for wx in range(x + 6, x + bw - 10, 14):
                lit = rng.random() < 0.4
                img[wy:wy + 10, wx:wx + 7] = (0.95, 0.9, 0.6) if lit else base * 0.4
        x += bw + int(rng.integers(0, 8))
    img[height - 40:] = np.array([0.35, 0.33, 0.32], np.float32)
    img[height - 40:height - 37] = 0.8
    noise = 0.0  # no grain: it would make the bundled PNGs ten times larger
    img = cv2.GaussianBlur(img, (0, 0), 0.7) + noise
    return np.clip(img, 0, 1)


def rig(frame: int):
    """The occluder: a pole sweeping right and a sagging wire; returns (colour, alpha) drawers."""
    alpha = np.zeros((H, W), np.float32)
    x = int(60 + frame * 11)
    cv2.rectangle(alpha, (x, 30), (x + 9, H - 20), 1.0, -1)
    pts = np.array([[0, 40 + frame], [W // 2, 70 + frame], [W - 1, 45]], np.int32)
    cv2.polylines(alpha, [pts], False, 1.0, 3, lineType=cv2.LINE_AA)
    return alpha


def to_u8(img):
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(7)
    strip = background(W + int(PAN * FRAMES) + 4, H, rng)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    for i in range(FRAMES):
        frame = FIRST + i
        x0 = PAN * i
        m = np.float32([[1, 0, -x0], [0, 1, 0]])  # sub-pixel pan
        clean = cv2.warpAffine(strip, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = rig(i)
        rig_colour = np.array([0.12, 0.12, 0.14], np.float32)
        plate = clean * (1 - alpha[..., None]) + rig_colour * alpha[..., None]
        mask = cv2.dilate((alpha > 0.02).astype(np.float32), np.ones((3, 3), np.uint8))
        name = f"{frame:04d}.png"
        cv2.imwrite(str(OUT / f"plate.{name}"), cv2.cvtColor(to_u8(plate), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(OUT / f"mask.{name}"), to_u8(mask))
        cv2.imwrite(str(OUT / f"truth.{name}"), cv2.cvtColor(to_u8(clean), cv2.COLOR_RGB2BGR))
        if i in (0, FRAMES - 1):
            cv2.imwrite(str(OUT / f"keys.{name}"), cv2.cvtColor(to_u8(clean), cv2.COLOR_RGB2BGR))
    print(f"wrote {FRAMES} frames to {OUT}")


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    main()
