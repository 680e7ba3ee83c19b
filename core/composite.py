"""Putting a fill into the plate: the composite weight, and the gradient-domain solve that
makes the fill meet the plate (and one source meet another) without a visible edge.

Conventions: images are float32 ``(h, w, C)``, display-referred (the pipeline works there;
values may exceed 1 only through a caller's own choice, nothing here clips); a *hole* is a
bool or 0/1 float ``(h, w)`` map, True/1 = pixel to fill. Pixel neighbours are the four
axis neighbours; differences are forward differences (``img[:, 1:] - img[:, :-1]``).

Why the gradient domain: a fill taken from another frame is right in its texture and
wrong in its low frequencies (exposure drift, vignetting, a flow that is a pixel off at
the border), and two sources side by side differ in both. Composited directly those
differences are the lens-shaped patches and thin scars a compositor sees at a glance.
Solving for the image whose gradients are the sources' own gradients, with the plate's
pixels as the boundary (Pérez et al. 2003, *Poisson image editing*), keeps every source's
texture and spreads the low-frequency mismatch smoothly over the hole instead.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["composite_alpha", "network_hole", "composite", "guidance", "poisson_fill"]

log = logging.getLogger(__name__)

# Conjugate-gradient steps of the solve (after a membrane start that is right in the low
# frequencies, what is left is local: where sources meet, and the last pixels of the border).
CG_STEPS = 60
# Holes that fill less than this share of their box are solved pixel by pixel (a wire across
# the frame), others over their box.
SPARSE_BELOW = 0.3


def composite_alpha(mask: np.ndarray, dilate: int, feather: float) -> np.ndarray:
    """Per-pixel blend weight of the fill: the mask, grown by ``dilate`` px, softened by ``feather``.

    Zero exactly wherever the grown, softened mask does not reach, so those pixels stay
    the plate's bit for bit. Never below the mask itself.
    """
    alpha = np.clip(mask, 0.0, 1.0).astype(np.float32)
    if dilate > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        alpha = cv2.dilate(alpha, kernel)
    if feather > 0:
        radius = int(np.ceil(2.5 * feather))
        soft = cv2.GaussianBlur(alpha, (2 * radius + 1, 2 * radius + 1), feather, borderType=cv2.BORDER_REPLICATE)
        alpha = np.maximum(alpha, soft)
    return alpha


def network_hole(mask: np.ndarray, dilate: int) -> np.ndarray:
    """Binary hole the network is told about: any non-zero mask pixel, grown a little.

    Slightly larger than the composite region so the network never sees half-masked
    object edges as valid content.
    """
    hole = (mask > 0).astype(np.uint8)
    grow = dilate + 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(hole, kernel).astype(np.float32)


def composite(pixels: np.ndarray, fill: np.ndarray, alpha: np.ndarray, origin=(0, 0)) -> np.ndarray:
    """``pixels`` (H, W[, C]) with ``fill`` (h, w, 3) blended in by ``alpha`` (h, w) at ``origin``
    (row, column of the fill's top-left pixel in ``pixels``).

    Only colour is touched: alpha and other channels pass through, and every pixel where
    ``alpha`` is 0 keeps the plate's value bit for bit. A one-channel plate takes the
    fill's mean. Returns a new array.
    """
    out = pixels.copy()
    y0, x0 = origin
    h, w = alpha.shape
    region = out[y0:y0 + h, x0:x0 + w]
    a = alpha[:, :, None]
    if region.ndim == 2 or region.shape[2] == 1:
        grey = fill.mean(axis=2, keepdims=True)
        target = region if region.ndim == 3 else region[:, :, None]
        blended = np.where(a > 0, target * (1 - a) + grey * a, target)
        region[...] = blended if region.ndim == 3 else blended[:, :, 0]
    else:
        rgb = region[:, :, :3]
        region[:, :, :3] = np.where(a > 0, rgb * (1 - a) + fill * a, rgb)
    return out


# --- the gradient-domain solve ----------------------------------------------------------------


def guidance(sources: Sequence[np.ndarray], weights: Sequence[np.ndarray]):
    """The gradient field a fill made of several sources should have: per pixel edge, the
    sources' own differences, mixed by their weights averaged over the edge's two pixels.

    Args:
        sources: (h, w, C) images (warped sources, a network fill).
        weights: (h, w) non-negative weights, one per source; normalised here per pixel.

    Returns:
        ``(gx, gy)``: (h, w-1, C) and (h-1, w, C) float32 forward differences.

    Inside one source's region the field is that source's gradient; where the weights pass
    from one source to another it is a mix of both gradients, with no step between the two
    sources' levels: that step is what the solve then spreads out.
    """
    total = np.maximum(np.sum(weights, axis=0), 1e-12)
    gx = gy = 0.0
    for src, wgt in zip(sources, weights):
        wn = wgt / total
        wx = 0.5 * (wn[:, 1:] + wn[:, :-1])
        wy = 0.5 * (wn[1:, :] + wn[:-1, :])
        gx = gx + wx[:, :, None] * (src[:, 1:] - src[:, :-1])
        gy = gy + wy[:, :, None] * (src[1:, :] - src[:-1, :])
    return np.asarray(gx, np.float32), np.asarray(gy, np.float32)


def poisson_fill(start: np.ndarray, boundary: np.ndarray, hole: np.ndarray,
                 gx: Optional[np.ndarray] = None, gy: Optional[np.ndarray] = None,
                 steps: int = CG_STEPS) -> np.ndarray:
    """The image that equals ``boundary`` outside ``hole`` and whose gradients inside best
    match ``(gx, gy)`` (least squares over every pixel edge touching the hole).

    Args:
        start: (h, w, C) the fill as composed (its values inside the hole start the solve).
        boundary: (h, w, C) the plate: the values outside the hole, kept exactly.
        hole: (h, w) bool / 0-1: where to solve.
        gx, gy: guidance differences as from :func:`guidance`; default: ``start``'s own
            (then the result is ``start`` with its border mismatch spread smoothly inward).
        steps: conjugate-gradient steps.

    Returns:
        (h, w, C) float32: ``boundary`` outside the hole (the same values), the solution inside.

    The edges considered are those with at least one end in the hole; image borders are
    free (Neumann). Solved for the correction to ``start``: its smooth part first (the
    mismatch on the hole's border carried inward by a push-pull membrane, which plain
    iterations would take hundreds of steps to move that far), then conjugate gradients over
    the hole's pixels only (a thin wire across a frame costs its own pixels, not its box's).
    Float in, float out: values above 1 are kept as they are.
    """
    start = np.asarray(start, np.float32)
    boundary = np.asarray(boundary, np.float32)
    inside = np.asarray(hole) > 0
    squeeze = start.ndim == 2
    if squeeze:
        start, boundary = start[:, :, None], boundary[:, :, None]
        gx = None if gx is None else gx[:, :, None] if gx.ndim == 2 else gx
        gy = None if gy is None else gy[:, :, None] if gy.ndim == 2 else gy
    out = boundary.copy()
    if inside.any():
        if gx is None:
            gx, gy = start[:, 1:] - start[:, :-1], start[1:, :] - start[:-1, :]
        u = np.where(inside[:, :, None], start, boundary)
        # Residual of the normal equations at U: over a pixel's edges, guidance minus U's difference.
        r = _divergence(gx - (u[:, 1:] - u[:, :-1]), gy - (u[1:, :] - u[:-1, :]))
        h, w = inside.shape
        ys, xs = np.nonzero(inside)
        membrane = _membrane(boundary - start, inside)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        if ys.size >= SPARSE_BELOW * (y1 - y0) * (x1 - x0):
            # A compact hole: solved over its box (dense filters are fast)...
            d = inside[y0:y1, x0:x1]
            dm = d[:, :, None].astype(np.float32)
            deg = _degree(d.shape, (y0 == 0, y1 == h, x0 == 0, x1 == w))

            def laplacian(v):
                return (deg * v - cv2.filter2D(v, -1, _NEIGHBOURS, borderType=cv2.BORDER_CONSTANT).reshape(v.shape)) * dm

            delta = _cg(r[y0:y1, x0:x1] * dm, laplacian, membrane[y0:y1, x0:x1] * dm, steps)
            box = out[y0:y1, x0:x1]
            box[...] = np.where(d[:, :, None], u[y0:y1, x0:x1] + delta, box)
        else:
            # ...a thin one (a wire across the frame) over its own pixels only.
            nbr, deg = _neighbours(inside, ys, xs)
            pad = np.zeros((ys.size + 1, out.shape[2]), np.float32)

            def laplacian(v):
                pad[:-1] = v
                # The four neighbours summed in turn: the values of pad[nbr.T].sum(axis=1), a
                # third of the time (no (n, 4, C) gather to reduce).
                return deg * v - (((pad[nbr[0]] + pad[nbr[1]]) + pad[nbr[2]]) + pad[nbr[3]])

            out[ys, xs] = u[ys, xs] + _cg(r[ys, xs], laplacian, membrane[ys, xs], steps)
    return out[:, :, 0] if squeeze else out


def _divergence(ex: np.ndarray, ey: np.ndarray) -> np.ndarray:
    """Per pixel: the sum over its edges of the edge value signed towards the pixel, i.e.
    -div. ``ex`` (h, w-1, C) is the value of (p -> right neighbour), ``ey`` of (p -> below)."""
    h, w1, c = ex.shape
    out = np.zeros((h, w1 + 1, c), np.float32)
    out[:, :-1] -= ex
    out[:, 1:] += ex
    out[:-1, :] -= ey
    out[1:, :] += ey
    return out


def _membrane(mismatch: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The border ring's ``mismatch`` carried smoothly into the hole (push-pull)."""
    from .flow import complete_flow   # the same pyramid the flow completion uses

    ring = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    ring &= ~inside
    if not ring.any():
        return np.zeros_like(mismatch)
    return complete_flow(np.where(ring[:, :, None], mismatch, 0).astype(np.float32), ring)


def _degree(shape, free) -> np.ndarray:
    """(h, w, 1) neighbour counts in a box whose (top, bottom, left, right) sides are, where
    ``free`` says so, the frame's own border (no neighbour beyond: Neumann); elsewhere the
    neighbour beyond the box exists (outside the hole: a fixed value)."""
    deg = np.full(shape + (1,), 4.0, np.float32)
    top, bottom, left, right = free
    deg[0] -= top
    deg[-1] -= bottom
    deg[:, 0] -= left
    deg[:, -1] -= right
    return deg


_NEIGHBOURS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)


def _neighbours(inside: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    """For the hole pixels (ys, xs): the index of each one's four neighbours in that list, (4, n)
    (n where the neighbour is outside the hole: a zero slot), and each one's degree (neighbours
    inside the frame)."""
    h, w = inside.shape
    n = ys.size
    index = np.full((h + 2, w + 2), n, np.int64)      # padded: beyond the frame is "outside"
    index[ys + 1, xs + 1] = np.arange(n)
    nbr = np.stack([index[ys, xs + 1], index[ys + 2, xs + 1], index[ys + 1, xs], index[ys + 1, xs + 2]])
    deg = 4.0 - (ys == 0) - (ys == h - 1) - (xs == 0) - (xs == w - 1)
    return nbr, deg.astype(np.float32)[:, None]


def _cg(r: np.ndarray, laplacian, x: np.ndarray, steps: int) -> np.ndarray:
    """Conjugate gradients on ``laplacian(x) = r`` (arrays (..., C), one system per channel), from ``x``."""
    def dot(a, b):
        return np.einsum("ijc,ijc->c", a, b) if a.ndim == 3 else np.einsum("nc,nc->c", a, b)

    res = r - laplacian(x)
    p = res.copy()
    rs = dot(res, res)
    stop = 1e-10 * max(float(dot(r, r).max()), 1e-12)   # residual down by 1e-5
    for _ in range(steps):
        if rs.max() <= stop:
            break
        ap = laplacian(p)
        alpha = (rs / np.maximum(dot(p, ap), 1e-30)).astype(np.float32)
        x = x + alpha * p
        res = res - alpha * ap
        rs_new = dot(res, res)
        p = res + (rs_new / np.maximum(rs, 1e-30)).astype(np.float32) * p
        rs = rs_new
    return x.astype(np.float32)
