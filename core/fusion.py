"""Source fusion: which flow-warped source fills which part of the hole, and how they mix.

Every source (a keyframe, or a plate frame that shows the hole) arrives warped into the
target's geometry at working size, display-referred, with its forward-backward flow
error. This module decides, per hole pixel, how much each source counts, from evidence:

* **ring score** (:func:`source_score`): how well the warped source matches the target on
  the known pixels around the hole, carried into the hole from its surroundings;
* **consensus inside the hole**: two sources from different frames that agree on a hole
  pixel are very likely both right (misaligned content rarely agrees with other misaligned
  content); a source that disagrees with every other one there is suspect. This is
  evidence from inside the hole, where the ring says nothing about a moving hand;
* **time**: a near frame has seen the scene as it is now; a far keyframe may show walkers
  that have since moved (consensus is what outvotes them: near frames agree with each
  other). A small cost per doubling of the frame distance breaks exact ties.

Where some hole pixel has no source, the network's fill (or, for a sliver, Telea's) is one
more candidate, the *context*: its cost grows with the depth into the hole, so it takes what no source shows and
competes next to the plate, where the surroundings predict the hole well.

The costs are smoothed so each source takes coherent regions, then turned into weights:
the best source dominates, and another source is mixed in only where it *agrees* with the
best one (grain and compression noise average out; misaligned content is never averaged,
which is what makes ghosts: a second eye, two mouths). The seams that hard switches leave
are removed afterwards in the gradient domain (:mod:`keyprop.core.composite`), which is why
the weights come back beside the fill.

Units: images display-referred [0, 1], costs in display units (mean absolute difference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import cv2
import numpy as np

from . import flow as flowlib

__all__ = ["Warped", "Fusion", "match_colour", "source_score", "fuse", "MAX_FLOW_ERROR_PX", "CONTEXT_COST", "context_fill"]

# Forward-backward flow error (working pixels) beyond which a known pixel counts as a mismatch.
MAX_FLOW_ERROR_PX = 20.0
# Cost (display units) per working pixel of depth into the hole of the context fill (the hole
# filled from its surroundings): 0.01 makes a source whose ring matches to 0.03 win from 3 px in.
CONTEXT_COST = 0.01
# Width (working pixels) of the ring around the hole on which colour is matched.
RING_PX = 12
# A source whose cost exceeds the best one's by SCORE_TEMPERATURE * best + SCORE_FLOOR
# weighs exp(-1) of the best one (before the agreement gate).
SCORE_TEMPERATURE = 0.3
SCORE_FLOOR = 0.001
# Two warped sources whose smoothed mean absolute difference at a pixel is AGREE_LEVEL
# weigh exp(-1) together of what they would if they agreed: about the difference grain and
# compression noise leave between two aligned frames, well below misaligned texture.
AGREE_LEVEL = 0.06
# Weight of the consensus cost (how far a source is from its closest other source), and the
# difference beyond which disagreeing more costs nothing more: consensus breaks ties the ring
# cannot (a moving hand inside the hole); it must not outvote a ring that clearly prefers one
# source (two keyframes can agree with each other because they share one wrong flow).
CONSENSUS_WEIGHT = 0.5
CONSENSUS_CAP = 2 * AGREE_LEVEL
# Cost per doubling of the frame distance between source and target (display units): a tie
# breaker. 0.004 measured no better on the real clips (27.24 / 25.18 dB against 27.30 / 25.16
# at 0) and 1.4 dB worse on the synthetic exposure shot, whose far keyframes are exact.
DISTANCE_COST = 0.001
# Smoothing (working pixels) of the per-pixel differences and of the costs.
AGREE_SIGMA = 1.5
COST_SIGMA = 3.0


@dataclass
class Warped:
    """One source in the target's geometry: ``pixels`` (h, w, 3) display-referred, ``error``
    (h, w) forward-backward flow error in working pixels (``flow.OUT_OF_FRAME_ERROR`` where
    the source cannot show the pixel: outside its frame, or in its own hole), ``distance``
    in frames from the target (0: unknown), ``frame``: the frame it comes from (None:
    unknown); two sources of one frame (a plate frame and that frame's own fill) are not
    independent evidence for each other."""

    pixels: np.ndarray
    error: np.ndarray
    distance: int = 0
    frame: Optional[int] = None


@dataclass
class Fusion:
    """The fused fill (h, w, 3), the candidates (the sources, then the context fill when
    given) with their weights per pixel (normalised), and ``labels`` (h, w) int16: the
    source of least cost (-1: the context fill)."""

    fill: np.ndarray
    sources: List[np.ndarray]
    weights: List[np.ndarray]
    labels: np.ndarray


def match_colour(warped: np.ndarray, target: np.ndarray, hole: np.ndarray, error: np.ndarray) -> np.ndarray:
    """``warped`` with the per-channel exposure gain that matches it to ``target`` around the hole.

    Exposure and white balance are gains in scene-linear light: the gain per channel is the
    ratio of the target's to the source's mean linear value on a ring of known target pixels
    around the hole where the warp is consistent (error < 1 px). Means are insensitive to
    slight misalignment (a least-squares fit would shrink towards flat). Left unchanged when
    the ring is too small or dark.
    """
    ring = cv2.dilate(hole.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING_PX + 1,) * 2))
    ring = (ring > 0) & (hole == 0) & (error < 1.0)
    if ring.sum() < 64:
        return warped
    # A gain in linear light is a gain of gain^(1/2.2) on display values (gamma 2.2 stands
    # in for the transfer curve; the display values must not be decoded through the
    # highlight roll-off, where 1.0 means infinity).
    src = (np.clip(warped[ring], 0.0, 1.0) ** 2.2).mean(axis=0)
    dst = (np.clip(target[ring], 0.0, 1.0) ** 2.2).mean(axis=0)
    gain = np.where(src > 1e-3, dst / np.maximum(src, 1e-3), 1.0) ** (1 / 2.2)
    gain = np.clip(gain, 0.5, 2.0).astype(np.float32)
    if np.all(np.abs(gain - 1.0) < 1e-3):
        return warped
    return (warped * gain).astype(np.float32)


def source_score(warped: np.ndarray, target: np.ndarray, hole: np.ndarray, error: np.ndarray):
    """(score, usable) of a warped source, per pixel: lower scores are better matches.

    The score is the source's colour difference to the target (display units) on the
    target's known pixels, smoothed and carried into the hole from its surroundings by
    push-pull (nearest first): inside the hole there is nothing to compare with, and the
    flows there are completions whose mutual error says little. ``usable`` is False where
    the flow leaves the source or lands in the source's own hole.
    """
    usable = error < flowlib.OUT_OF_FRAME_ERROR
    known = (hole == 0) & usable
    photo = mean_abs_difference(warped, target)
    photo = np.where(error > MAX_FLOW_ERROR_PX, np.float32(1.0), photo) * known
    # Smoothed over known pixels only (the hole's zeroed target must not bleed into its rim).
    weight = cv2.GaussianBlur(known.astype(np.float32), (0, 0), 2.0)
    photo = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 2.0) / np.maximum(weight, 1e-6)
    score = flowlib.complete_flow(photo[:, :, None].astype(np.float32), known)[:, :, 0]
    return score.astype(np.float32), usable


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean over channels of ``|a - b|``, (h, w, C) float32 -> (h, w) float32.

    OpenCV's per-pixel transform: numpy's mean over a 3-long last axis costs 40 times as much
    (2 ms against 0.05 at 640x128, and fusion takes a dozen per frame)."""
    diff = cv2.absdiff(np.asarray(a, np.float32), np.asarray(b, np.float32))
    if diff.ndim == 2:
        return diff
    c = diff.shape[2]
    if c > 4:
        return diff.mean(axis=2)
    return cv2.transform(diff, np.full((1, c), 1.0 / c, np.float32))


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smoothed per-pixel mean absolute difference of two images (display units)."""
    return cv2.GaussianBlur(mean_abs_difference(a, b), (0, 0), AGREE_SIGMA)


def context_fill(target: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
    """The hole filled from its own surroundings: Telea's fast-marching inpainting per channel,
    in float, drawing on ``radius`` pixels around each hole pixel. (h, w, C) -> (h, w, C);
    pixels outside the hole unchanged."""
    inside = hole > 0
    out = np.array(target, dtype=np.float32, copy=True)
    if not inside.any():
        return out
    marks = inside.astype(np.uint8)
    for c in range(out.shape[2]):
        # OpenCV's float Telea expects 8-bit-like magnitudes: on [0, 1] values it returns
        # garbage (0.18 inside a hole in a flat 0.8 field), on [0, 255] the right fill.
        channel = np.ascontiguousarray(out[:, :, c])
        filled = cv2.inpaint(channel * np.float32(255.0), marks, radius, cv2.INPAINT_TELEA) / np.float32(255.0)
        out[:, :, c] = np.where(inside, filled, channel)
    return out


def _smooth_over(values: np.ndarray, where: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of ``values`` over the pixels ``where`` only (normalised)."""
    w = where.astype(np.float32)
    num = cv2.GaussianBlur((values * w).astype(np.float32), (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)
    return np.where(where, num / np.maximum(den, 1e-6), values).astype(np.float32)


def fuse(warps: Sequence[Warped], target: np.ndarray, hole: np.ndarray,
         context: Optional[np.ndarray] = None) -> Fusion:
    """Per-pixel mix of the warped sources and the context fill: see the module docstring.

    Args:
        warps: the sources, each already exposure-matched (:func:`match_colour`).
        target: (h, w, 3) the target, its hole zeroed (only its known pixels are read).
        hole: (h, w) 0/1 working-size hole.
        context: (h, w, 3) the hole filled from its own surroundings (the network's fill, or
            :func:`context_fill` where what no source shows is a sliver), or None. It is a candidate everywhere, at a cost that grows
            with the depth into the hole (CONTEXT_COST per working pixel): next to the plate
            the surroundings predict the hole better than any misaligned source (a thin wire);
            deep inside, a source that matched around the hole wins. Where no source shows a
            pixel it is all there is. Without it, pixels no source shows come out 0.
    """
    n = len(warps)
    scored = [source_score(w.pixels, target, hole, w.error) for w in warps]
    usable = [u for _, u in scored]
    cost = [s.copy() for s, _ in scored]
    # Consensus: how far each source is from the closest other one (with three or more;
    # with two, disagreement says nothing about which one is wrong).
    diff = {}
    for i in range(n):
        for j in range(i + 1, n):
            diff[i, j] = diff[j, i] = _difference(warps[i].pixels, warps[j].pixels)
    if n >= 3:
        for i in range(n):
            others = [np.where(usable[j], diff[i, j], np.float32(1.0)) for j in range(n)
                      if j != i and (warps[i].frame is None or warps[i].frame != warps[j].frame)]
            if others:
                cost[i] += CONSENSUS_WEIGHT * np.minimum(np.minimum.reduce(others), CONSENSUS_CAP)
    for i, w in enumerate(warps):
        cost[i] += DISTANCE_COST * np.log2(1.0 + abs(w.distance))
        # Smoothed over where the source is usable: its costs elsewhere say nothing here.
        cost[i] = _smooth_over(cost[i], usable[i], COST_SIGMA)
    sources = [w.pixels for w in warps]
    if context is not None:
        depth = cv2.distanceTransform((hole > 0).astype(np.uint8), cv2.DIST_L2, 3)
        for i in range(n):
            diff[i, n] = diff[n, i] = _difference(warps[i].pixels, context)
        sources.append(context)
        usable.append(np.ones(hole.shape, bool))
        # What a source with no other source agreeing pays, plus the depth: the context is
        # compared with the sources on the evidence of the ring, not on their consensus.
        lonely = CONSENSUS_WEIGHT * CONSENSUS_CAP if n >= 3 else 0.0
        cost.append((CONTEXT_COST * depth + lonely + DISTANCE_COST).astype(np.float32))
    m = len(sources)
    costs = np.stack([np.where(u, c, np.inf) for c, u in zip(cost, usable)])   # (m, h, w)
    best_index = np.argmin(costs, axis=0)
    best = np.min(costs, axis=0)
    shown = np.isfinite(best)
    base = np.where(shown, best, 0.0).astype(np.float32)
    temperature = SCORE_TEMPERATURE * base + SCORE_FLOOR
    weights = []
    for i in range(m):
        # Disagreement with the best candidate at each pixel (zero where it is the best).
        gap = np.zeros(hole.shape, np.float32)
        for j in range(m):
            if j != i:
                gap = np.where(best_index == j, diff[i, j], gap)
        gate = np.exp(-(gap / AGREE_LEVEL) ** 2)
        wgt = np.where(usable[i], np.exp(-(cost[i] - base) / temperature) * gate, 0.0)
        weights.append(wgt.astype(np.float32))
    total = np.maximum(np.sum(weights, axis=0), 1e-12)
    weights = [w / total for w in weights]
    fill = np.zeros(target.shape[:2] + (3,), np.float32)
    for src, wgt in zip(sources, weights):
        fill += wgt[:, :, None] * src
    labels = np.where(shown & (best_index < n), best_index, -1).astype(np.int16)
    return Fusion(fill, sources, weights, labels)
