"""Training examples made the way the paper makes them: one picture seen by several cameras.

A target crop and ``n_refs`` reference frames are rendered from the same picture through
different views. Each view is a homography (camera motion: translation, rotation, scale,
shear and a perspective tilt, as the authors' IAAPerspective/IAAAffine augmentations) after
a radial lens distortion (their OpticalDistortion), and each reference gets a slight colour
and exposure shift. Beyond the paper, a second picture can ride on top as a foreground
layer with its own motion (parallax between two depth layers), and real frame sequences
give real motion.

Geometry convention: a view is a map from its output pixel (x, y) to canvas coordinates;
frames are rendered with ``cv2.remap`` (reflecting borders, so no black edges appear).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import cv2
import numpy as np

from .masks import MaskSettings, blob, random_mask
from .sources import PictureBank

__all__ = ["SynthSettings", "make_example", "render_view", "motion_homography"]


@dataclass(frozen=True)
class SynthSettings:
    """How far the references stray from the target, as fractions of the crop side."""

    crop_cover: tuple = (0.25, 0.8)     # crop side / picture short side (sets the detail scale)
    shift_small: float = 0.12           # translation of most references...
    shift_large: float = 0.45           # ...and of the large-motion ones
    large_motion_prob: float = 0.2
    rotate_deg: float = 8.0             # std of the relative rotation
    scale_std: float = 0.1              # std of log relative scale
    shear: float = 0.08
    perspective: float = 0.05           # corner jitter of the perspective tilt
    lens_prob: float = 0.5
    lens_k: float = 0.08                # radial coefficient range (+- barrel / pincushion)
    colour_std: float = 0.02            # per-channel gain std of the references
    exposure: float = 0.15              # +- log gain of the references (slight exposure change)
    foreground_prob: float = 0.3        # a second layer with its own motion (parallax)
    foreground_shift: float = 0.08
    ref_mask_prob: float = 0.15         # a reference also has a hole (the authors do this)
    self_source_prob: float = 0.0       # the only source is the target itself, hole included
                                        # (single-image inpainting, as keyprop runs it when no
                                        # frame shows the hole)
    recolour_prob: float = 0.0          # the picture gets a random colour mix (grey pictures turn
                                        # duotone): the hole's colour must come from its context,
                                        # not from a prior learned on mostly grey pictures
    quantize: bool = True               # frames as 8-bit, as display-referred plates usually are
    masks: MaskSettings = field(default_factory=MaskSettings)


def _translate(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def motion_homography(rng: np.random.Generator, size: int, s: SynthSettings) -> np.ndarray:
    """A random camera motion about the crop centre: reference pixel -> target pixel (3x3)."""
    c = size / 2.0
    angle = np.deg2rad(np.clip(rng.normal(0, s.rotate_deg), -3 * s.rotate_deg, 3 * s.rotate_deg))
    scale = float(np.exp(np.clip(rng.normal(0, s.scale_std), -0.3, 0.3)))
    shear = rng.uniform(-s.shear, s.shear)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = rot @ np.array([[scale, shear * scale, 0], [0, scale, 0], [0, 0, 1]])
    # Perspective tilt: move the four corners a little and fit the homography.
    corners = np.array([[-c, -c], [c, -c], [c, c], [-c, c]], np.float32)
    moved = corners + rng.uniform(-s.perspective, s.perspective, (4, 2)).astype(np.float32) * size
    tilt = cv2.getPerspectiveTransform(corners, moved).astype(np.float64)
    reach = s.shift_large if rng.random() < s.large_motion_prob else s.shift_small
    shift = rng.uniform(-reach, reach, 2) * size
    return _translate(c + shift[0], c + shift[1]) @ tilt @ affine @ _translate(-c, -c)


def _lens_grid(size: int, k: float) -> np.ndarray:
    """Output pixel grid (H, W, 2) after radial distortion ``u * (1 + k |u|^2)`` about the centre."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx - c) / c, (yy - c) / c
    f = 1.0 + k * (u * u + v * v)
    return np.stack([u * f * c + c, v * f * c + c], axis=2)


def render_view(canvas: np.ndarray, homography: np.ndarray, size: int, lens_k: float = 0.0,
                border=cv2.BORDER_REFLECT101) -> np.ndarray:
    """Sample ``canvas`` at ``homography @ lens(p)`` for every output pixel p of a size x size view."""
    grid = _lens_grid(size, lens_k)
    pts = np.concatenate([grid, np.ones(grid.shape[:2] + (1,))], axis=2) @ homography.T  # (H, W, 3)
    z = pts[:, :, 2:3]
    z = np.where(np.abs(z) < 1e-6, 1e-6, z)
    maps = (pts[:, :, :2] / z).astype(np.float32)
    return cv2.remap(canvas, maps[:, :, 0], maps[:, :, 1], cv2.INTER_LINEAR, borderMode=border)


def _prepare_canvas(picture: np.ndarray, size: int, rng: np.random.Generator, s: SynthSettings) -> np.ndarray:
    """Scale the picture so that the crop covers ``crop_cover`` of its short side; random flip."""
    cover = rng.uniform(*s.crop_cover)
    f = size / (cover * min(picture.shape[:2]))
    if abs(f - 1.0) > 0.02:
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
        picture = cv2.resize(picture, (max(size, round(picture.shape[1] * f)), max(size, round(picture.shape[0] * f))),
                             interpolation=interp)
    if rng.random() < 0.5:
        picture = picture[:, ::-1]
    return np.ascontiguousarray(np.clip(picture, 0, 1), dtype=np.float32)


def _recolour(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour mix of the whole picture: out = picture @ M + b (clipped), M a random
    blend of the identity, a channel permutation and per-channel gains. A grey picture becomes
    a random duotone; a colour one gets its hues moved."""
    mix = rng.uniform(0.0, 1.0)
    m = (1 - mix) * np.eye(3) + mix * np.eye(3)[rng.permutation(3)]
    m = m * rng.uniform(0.3, 1.2, (1, 3))
    b = rng.uniform(-0.1, 0.3, 3) * (1 - m.sum(axis=0) / 3)
    return np.clip(picture @ m.astype(np.float32) + b.astype(np.float32), 0, 1).astype(np.float32)


def _colour_shift(frame: np.ndarray, rng: np.random.Generator, s: SynthSettings) -> np.ndarray:
    gain = np.exp(rng.normal(0, s.colour_std, 3) + rng.uniform(-s.exposure, s.exposure)).astype(np.float32)
    gamma = np.float32(np.exp(rng.normal(0, 0.03)))
    return np.clip(np.power(np.clip(frame, 0, 1), gamma) * gain, 0, 1)


def _occluder(shape, rng: np.random.Generator) -> np.ndarray:
    """Stand-in content for the thing being removed (what the plate shows inside the mask)."""
    colour = rng.random(3).astype(np.float32)
    noise = rng.normal(0, 0.1, shape[:2] + (3,)).astype(np.float32)
    return np.clip(colour + cv2.GaussianBlur(noise, (0, 0), 2), 0, 1)


def make_example(bank: PictureBank, rng: np.random.Generator, size: int, n_refs: int,
                 s: SynthSettings = SynthSettings()) -> Dict[str, np.ndarray]:
    """One training example.

    Returns a dict of float32 arrays: ``target`` (H, W, 3) the ground truth, ``mask`` (H, W)
    1 = hole, ``plate`` (H, W, 3) the target as a plate would show it (foreign content in
    the hole), ``refs`` (T, H, W, 3), ``ref_masks`` (T, H, W), ``ref_plates`` (T, H, W, 3).
    """
    kind, source = bank.draw(rng)
    if kind == "sequence":
        frames = _sequence_views(source, rng, size, n_refs, s)
    else:
        frames = _still_views(source, bank, rng, size, n_refs, s)
    target, refs = frames[0], frames[1:]
    refs = [_colour_shift(r, rng, s) for r in refs]
    if rng.random() < 0.5:  # a whole-example brightness/contrast change (the authors' shared augmentation)
        a, b = np.float32(rng.uniform(0.8, 1.2)), np.float32(rng.uniform(-0.1, 0.1))
        target, refs = np.clip(target * a + b, 0, 1), [np.clip(r * a + b, 0, 1) for r in refs]
    if s.quantize:
        target = np.round(target * 255) / 255
        refs = [np.round(r * 255) / 255 for r in refs]
    mask = random_mask((size, size), rng, s.masks)
    ref_masks = [random_mask((size, size), rng, s.masks) if rng.random() < s.ref_mask_prob
                 else np.zeros((size, size), np.float32) for _ in refs]
    plate = np.where(mask[:, :, None] > 0, _occluder(target.shape, rng), target)
    ref_plates = [np.where(m[:, :, None] > 0, _occluder(r.shape, rng), r) for r, m in zip(refs, ref_masks)]
    if rng.random() < s.self_source_prob:
        refs, ref_masks, ref_plates = [target] * len(refs), [mask] * len(refs), [plate] * len(refs)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return dict(target=f32(target), mask=f32(mask), plate=f32(plate), refs=f32(np.stack(refs)),
                ref_masks=f32(np.stack(ref_masks)), ref_plates=f32(np.stack(ref_plates)))


def _still_views(picture, bank, rng, size, n_refs, s):
    canvas = _prepare_canvas(picture, size, rng, s)
    if s.recolour_prob > 0 and rng.random() < s.recolour_prob:  # (no draw at 0: older runs replay)
        canvas = _recolour(canvas, rng)
    h, w = canvas.shape[:2]
    cx, cy = rng.uniform(size / 2, max(size / 2 + 1, w - size / 2)), rng.uniform(size / 2, max(size / 2 + 1, h - size / 2))
    place = _translate(cx - size / 2, cy - size / 2)  # target pixel -> canvas
    motions = [np.eye(3)] + [motion_homography(rng, size, s) for _ in range(n_refs)]
    lens = [rng.uniform(-s.lens_k, s.lens_k) if rng.random() < s.lens_prob else 0.0 for _ in motions]
    frames = [render_view(canvas, place @ m, size, k) for m, k in zip(motions, lens)]
    if rng.random() < s.foreground_prob:
        frames = _add_foreground(frames, motions, lens, bank, rng, size, s)
    return frames


def _add_foreground(frames, motions, lens, bank, rng, size, s):
    """A second picture on a soft blob moving with its own extra shift in every view (parallax)."""
    fg = _prepare_canvas(bank.still(rng), size, rng, s)
    alpha = blob((size, size), rng, size=rng.uniform(0.3, 0.7))
    # Foreground canvas: its blob lies at a random place in the target's coordinates.
    ox, oy = rng.uniform(-0.3, 0.3, 2) * size
    fh, fw = fg.shape[:2]
    fx, fy = rng.uniform(0, max(1, fw - size)), rng.uniform(0, max(1, fh - size))
    out = []
    for i, (frame, m, k) in enumerate(zip(frames, motions, lens)):
        extra = np.zeros(2) if i == 0 else rng.normal(0, s.foreground_shift, 2) * size
        to_blob = _translate(-ox + extra[0], -oy + extra[1]) @ m          # view pixel -> blob pixel
        a = render_view(alpha, to_blob, size, k, border=cv2.BORDER_CONSTANT)[:, :, None]
        colour = render_view(fg, _translate(fx, fy) @ to_blob, size, k)
        out.append(a * colour + (1 - a) * frame)
    return out


def _sequence_views(frames, rng, size, n_refs, s, max_gap: int = 8):
    """Target and references from a real frame sequence, cropped alike (real camera and scene motion)."""
    n = len(frames)
    t = int(rng.integers(n))
    others = [i for i in range(max(0, t - max_gap), min(n, t + max_gap + 1)) if i != t]
    picks = list(rng.choice(others, size=n_refs, replace=len(others) < n_refs))
    cover = rng.uniform(*s.crop_cover)
    base = frames[t]
    f = size / (cover * min(base.shape[:2]))
    h, w = base.shape[:2]
    cx, cy = rng.uniform(size / 2 / f, max(size / 2 / f + 1, w - size / 2 / f)), \
        rng.uniform(size / 2 / f, max(size / 2 / f + 1, h - size / 2 / f))
    # view pixel -> frame pixel: scale 1/f about the chosen centre
    view = _translate(cx, cy) @ np.diag([1 / f, 1 / f, 1.0]) @ _translate(-size / 2, -size / 2)
    out = []
    for i in [t] + picks:
        frame = frames[i]
        if frame.shape[:2] != base.shape[:2]:
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if f < 1:  # prefilter before sampling down
            sigma = 0.5 / f
            frame = cv2.GaussianBlur(frame, (0, 0), sigma * 0.6)
        out.append(render_view(frame, view, size))
    return out

