"""Dense optical flow from a target frame to a keyframe, completed inside the masks,
with a forward-backward consistency error.

Conventions (all arrays numpy, pixel units, full frame resolution):

* ``flow`` is float32 ``(H, W, 2)``; channel 0 is x (columns, to the right), channel 1
  is y (rows, down). It is a **backward warp from the target's point of view**: the
  target pixel at integer position ``(x, y)`` is found in the key at
  ``(x + flow[y, x, 0], y + flow[y, x, 1])``. So ``warp(key, flow)`` looks like the
  target. Pixel centres are at integer coordinates (OpenCV ``remap`` convention).
* ``error`` is float32 ``(H, W)``: ``|F_tk(p) + F_kt(p + F_tk(p))|`` in pixels, where
  ``F_tk`` is target->key flow (the one returned) and ``F_kt`` key->target flow,
  sampled bilinearly. Near 0 where the two agree; large at occlusions and wherever
  either flow is wrong. Where ``p + F_tk(p)`` leaves the key frame the error is the
  constant :data:`OUT_OF_FRAME_ERROR` (the key cannot supply that pixel at all).
* Images are display-referred (see :mod:`keyprop.core.color`), float ``(H, W, C)``
  in [0, 1], RGB(A); alpha is ignored. Masks are float ``(H, W)`` in [0, 1],
  1 = region to fill (its content is not trusted for matching).

Method: OpenCV's DIS flow (Kroeger et al. 2016, ``cv2.DISOpticalFlow``, MEDIUM
preset) on 8-bit luma at a reduced working size (long side ``work_size``), because
DIS cost grows with pixel count and the network only needs flow at 1/8 resolution
anyway. The flow is resized back and its vectors scaled by the size ratio per axis.

Inside a mask the target content is the thing being removed (a rig, a wire, a
person), so DIS's answer there describes the wrong object. Before DIS the masked
luma is inpainted (``cv2.inpaint``, Telea) so the object's edges do not drag the
flow of neighbouring background; after DIS the flow in the (slightly dilated) mask
is discarded and completed from the surrounding valid flow by pyramid push-pull
normalized convolution: valid vectors and a validity weight are blurred and
halved level by level, holes take the normalized average of the coarsest level
that covers them, and the result is pulled back up. That is a smooth membrane
through the boundary flow, exact for a rigid shift and cheap for holes of any size.
Forward flow is completed in the dilated target mask; backward flow in the dilated
key mask and wherever it points into the dilated target mask (matches there are as
unreliable as the hole itself).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import cv2
import numpy as np

from .roi import mask_bbox

__all__ = ["flow", "flow_between", "FlowFrame", "warp", "complete_flow", "extrapolate", "consistency_error",
           "cross_matches", "pair_key", "DEFAULT_WORK_SIZE", "OUT_OF_FRAME_ERROR"]

log = logging.getLogger(__name__)

DEFAULT_WORK_SIZE = 1024
# Error (pixels) where the target pixel's match falls outside the key: the key
# cannot supply it, which should read as "flow useless here" to the network.
OUT_OF_FRAME_ERROR = 1000.0
# Pixels (at working size) by which masks grow before the flow inside is replaced:
# DIS patches straddling the mask edge are contaminated too (MEDIUM: 8 px patches at
# half resolution, 16 px here); 8 measured clean on a synthetic shift with a foreign object.
_MASK_MARGIN = 8
# The inpainted area grows only a little: a larger blob of smooth inpaint would
# itself mismatch the key's texture.
_PREFILL_MARGIN = 2
_MASK_THRESHOLD = 0.5 / 255  # any non-zero mask value counts as "to fill"
# Width (working pixels) of the band of valid flow around a hole that the affine motion
# completing it is fitted on.
_RING_PX = 24
# Pre-alignment (flow(prealign=True)) is skipped when no frame corner moves this far (working
# pixels): DIS alone handles small motion.
_PREALIGN_MIN_PX = 6.0
# ...and when DIS alone is consistent outside the holes (mean forward-backward error, pixels).
_PREALIGN_ABOVE_PX = 0.5
# ...and when the plain flow already follows the homography: all but _EXPLAINED_SHARE of the
# known in-frame pixels within _EXPLAINED_PX (working pixels) of where it sends them.
_EXPLAINED_PX = 0.5
_EXPLAINED_SHARE = 0.02
# ...and, where it must move far (flow_between's prealign_motion: between plate frames), when
# the plain flow has found a small motion: consistent (error under _TRACKED_ERROR_PX) on at
# least _TRACKED_SHARE of the known pixels, _TRACKED_PERCENT % of those moving less than
# _TRACKED_REACH of the distance asked for. Then no homography is looked for: ORB matching
# both ways and RANSAC were a third of a keyless plate pair's flow (bikes_walker's lookahead:
# 0.72 of 2.63 s). Between the plate frames of the six real 16-frame shots, keyless and keyed,
# one homography in 259 passed (carphone_wire's 1014 -> 1006) and none was used; 228 are now
# not looked for. Their plain flows were 37-92 % consistent; a bike crossing the frame moves
# 5-10 % of the pixels 40-70 px, hence not the far end. In bench/quality.py the plate pairs
# whose homography passed (19 in --no-keys, 15 of them used) were 0.2-4 % consistent (DIS
# lost them) or moved 80 % of the pixels 0.55 of the distance or more (0.93 where used).
# (tests/test_flow.py's 25 % zoom with 10 degrees of roll: 23 % consistent, still looked for.)
_TRACKED_ERROR_PX = 1.0
_TRACKED_SHARE = 0.4
_TRACKED_PERCENT = 80
_TRACKED_REACH = 0.5

# flow.extrapolate: hole pixels from this deep (working pixels), fully this much further,
# take an adjacent source's own motion where it differs from the surroundings' by more than
# EXTRAPOLATE_AGREE_PX (fully 1 px more) and was found (consistency error under
# EXTRAPOLATE_MAX_ERROR_PX); fixed-point steps.
EXTRAPOLATE_DEPTH_PX = 6.0
EXTRAPOLATE_MAX_ERROR_PX = 4.0
EXTRAPOLATE_RAMP_PX = 4.0
EXTRAPOLATE_AGREE_PX = 0.5
EXTRAPOLATE_STEPS = 3

_helper = None
_helper_lock = threading.Lock()


_local = threading.local()


class _Offer:
    """The second half of a thread's :func:`_both`, offered while it computes the first:
    a thread that would otherwise wait for that thread's work takes it (:func:`help_until`)."""

    def __init__(self, fn, tag):
        self.fn, self.tag = fn, tag
        self.future: Future = Future()

    def run(self) -> None:
        self.future.set_running_or_notify_cancel()
        try:
            self.future.set_result(self.fn())
        except BaseException as e:  # noqa: BLE001 - raised in the offering thread
            self.future.set_exception(e)


_offers: list = []                      # open offers, oldest first (taken: removed, under _offers_cond)
_offers_cond = threading.Condition()


@contextlib.contextmanager
def offering(tag):
    """While in it, this thread's :func:`_both` calls (a thread that computes two directions in
    turn: :func:`directions_in_turn`) offer their second half, under ``tag``, to a thread
    waiting for work of that tag (:func:`help_until`)."""
    before = getattr(_local, "offer_tag", None)
    _local.offer_tag = tag
    try:
        yield
    finally:
        _local.offer_tag = before


def help_until(done: Callable[[], bool], tag) -> None:
    """Until ``done()``: take the second halves of flows offered under ``tag`` (:func:`offering`)
    and compute them here, else sleep until one is offered. ``done`` is checked when an offer
    is made or taken and at least every 20 ms; :func:`wake_helpers` checks it now.

    core.api's filling thread waits this way for a frame's flows under way on the lookahead
    threads: a flow's other direction on a second core instead of after the first (same
    values: each direction is computed alone whichever thread runs it)."""
    while True:
        with _offers_cond:
            offer = None
            while not done():
                offer = next((o for o in _offers if o.tag == tag), None)
                if offer is not None:
                    _offers.remove(offer)
                    break
                _offers_cond.wait(0.02)
            if offer is None:
                return
        offer.run()


def wake_helpers(*_) -> None:
    """Make :func:`help_until` check its ``done`` now (e.g. a future's done callback)."""
    with _offers_cond:
        _offers_cond.notify_all()


def directions_in_turn() -> None:
    """From now on, this thread computes a flow's two directions one after the other instead of
    handing one to the helper thread (for threads that already keep the cores busy side by
    side, e.g. core.api's window workers: queueing on the one helper would only make them wait)."""
    _local.in_turn = True
    _thread_dis()   # made now, with the thread, rather than in its first frame's first flow


def _both(first, second):
    """``(first(), second())``, the second on a helper thread.

    The two directions of a flow (DIS, completion) are independent and their work is mostly
    OpenCV and numpy calls that release the GIL, so they overlap on two cores (measured on 2
    cores: 10-18 % less time per frame for a wire's ROI, 15-18 % for a full frame, whose
    single DIS calls do not keep both cores busy either). Results are the same as calling the
    two in turn.

    A thread that computes the two in turn (:func:`directions_in_turn`) and works under a tag
    (:func:`offering`: core.api's lookahead threads) offers the second to a thread waiting on
    its work (:func:`help_until`) while it computes the first, and computes it itself when no
    such thread has taken it by then.
    """
    global _helper
    if threading.current_thread().name.startswith("keyprop-flow"):
        return first(), second()        # on the helper: never wait on it from itself
    if getattr(_local, "in_turn", False):
        tag = getattr(_local, "offer_tag", None)
        if tag is None:
            return first(), second()    # told to
        offer = _Offer(second, tag)
        with _offers_cond:
            _offers.append(offer)
            _offers_cond.notify_all()
        try:
            a = first()
        finally:
            with _offers_cond:
                mine = offer in _offers   # not taken: withdrawn
                if mine:
                    _offers.remove(offer)
        return a, (second() if mine else offer.future.result())
    if _helper is None:
        with _helper_lock:
            if _helper is None:
                _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyprop-flow")
    pending = _helper.submit(second)
    try:
        a = first()
    finally:
        b = pending.result()
    return a, b


# ----------------------------------------------------------------------------- warp


def warp(image: np.ndarray, flow: np.ndarray,
         border: int = cv2.BORDER_REPLICATE, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Sample ``image`` at ``p + flow(p)`` with bilinear interpolation.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, float32 (other dtypes are converted).
        flow: float32 ``(H, W, 2)``, x then y, pixels, in the convention above.
        border: OpenCV border mode for samples outside ``image``.
        origin: ``(x, y)`` of ``image`` where ``flow``'s first pixel is (a flow over part of
            the image: the same samples as that part of the whole image's warp).

    Returns:
        ``image``'s layout with ``flow``'s height and width, float32.
    """
    flow = np.asarray(flow, dtype=np.float32)
    grid = _grid(*flow.shape[:2])
    if origin != (0, 0):
        grid = grid + np.array(origin, np.float32)   # whole pixels: exact, before the flow is added
    return _sample(image, grid + flow, border)


def _sample(image: np.ndarray, at: np.ndarray, border: int) -> np.ndarray:
    """``image`` sampled bilinearly at the positions ``at`` (float32 ``(h, w, 2)``, x then y):
    :func:`warp` once ``p + flow(p)`` is known."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] > 4:
        # cv2.remap handles at most 4 channels.
        return np.stack([_sample(image[:, :, c], at, border) for c in range(image.shape[2])], axis=2)
    out = cv2.remap(image, at, None, cv2.INTER_LINEAR, borderMode=border)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


# ------------------------------------------------------------------------ completion


def complete_flow(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill ``flow`` where ``valid`` is False from the valid surroundings (push-pull).

    Args:
        flow: float32 ``(H, W, 2)`` (any channel count works).
        valid: bool ``(H, W)``; True where ``flow`` is trusted.

    Returns:
        float32 ``(H, W, 2)``, equal to ``flow`` where ``valid``, smooth inside holes.
        If nothing is valid, zeros.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if valid.all():
        return flow.copy()
    if not valid.any():
        log.debug("complete_flow: no valid flow, returning zeros")
        return np.zeros_like(flow)
    weight = valid.astype(np.float32)
    base = _affine_base(flow, valid) if flow.shape[2] == 2 else None
    if base is None:
        filled = _push_pull(flow * weight[:, :, None], weight)
    else:
        residual = (flow - base) * weight[:, :, None]
        filled = base + _push_pull(residual, weight)
    return np.where(valid[:, :, None], flow, filled).astype(np.float32)


def extrapolate(forward: np.ndarray, beyond_flow: Callable[[], tuple], target_hole: np.ndarray,
                source_hole: np.ndarray) -> np.ndarray:
    """``forward`` (target -> an adjacent source, completed in the target's hole) with the
    source's own motion deep inside the hole where that motion says otherwise: (h, w, 2).

    Inside the target's hole no pixel can be matched, so :func:`complete_flow` carries the
    motion of the hole's surroundings in. Where the hole hides something that moves unlike
    them (the edge of a walking man behind a passing occluder) that motion is wrong, and the
    warped source shows the background where the man is. The source frame shows that
    content, and ``beyond_flow() -> (beyond, error)`` (source -> the frame one step further
    the same way, found where both frames show it, and its consistency error; called only
    when some hole pixel is deep enough) says how it moves: at constant motion it moved
    from the target to the source as it moves on, ``forward(p) = beyond(p + forward(p))``,
    solved by EXTRAPOLATE_STEPS fixed-point steps from ``forward``. It is taken:

    * deep in the hole: from EXTRAPOLATE_DEPTH_PX working pixels in, fully EXTRAPOLATE_RAMP_PX
      further (near the border the surroundings predict the motion better; a thin wire's
      hole is all border);
    * where the source shows the pixel (outside its own hole, inside its frame) and its
      motion beyond was found (consistency error under EXTRAPOLATE_MAX_ERROR_PX; not where
      the content leaves the frame beyond);
    * where the two disagree: from EXTRAPOLATE_AGREE_PX apart, fully 1 px further. Where the
      surroundings' motion is right (a camera move) the measured one only adds its noise.

    ``bench/real_quality.py`` (PSNR keys / no keys): 27.33 / 25.26 -> 27.81 / 25.57 dB,
    bikes_walker +1.6 / +1.0, bbb_walker +1.2 / +0.8, the wires and 176x144 clips within
    0.05; flicker 0.81 / 1.03 -> 0.70 / 0.92. ``bench/quality.py`` (synthetic): 37.50 ->
    37.48, every shot within 0.12. Without the agreement test large_motion lost 2.4 dB;
    from the hole's border on (depth 0), bikes_wire lost 0.45; without the error test,
    content leaving the frame beyond (tests/test_fusion.py's pan) took a wrong motion.
    """
    depth = cv2.distanceTransform((target_hole > 0).astype(np.uint8), cv2.DIST_L2, 5)
    deep = np.clip((depth - EXTRAPOLATE_DEPTH_PX) / EXTRAPOLATE_RAMP_PX, 0.0, 1.0)
    bbox = mask_bbox(deep)
    if bbox is None:
        return forward
    beyond, beyond_error = beyond_flow()
    shown = ((source_hole <= 0) & (beyond_error < EXTRAPOLATE_MAX_ERROR_PX)).astype(np.float32)
    # Only pixels deep in the hole change, each from its own flow alone: the steps run over
    # their bounding box (a walker's hole is a few % of the frame), sampling the whole frames.
    box = (slice(bbox[0], bbox[2]), slice(bbox[1], bbox[3]))
    start, grid, deep = forward[box], _grid(*forward.shape[:2])[box], deep[box]
    out = start
    for _ in range(EXTRAPOLATE_STEPS):
        at = grid + out
        moved = cv2.remap(beyond, at[:, :, 0], at[:, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        seen = cv2.remap(shown, at[:, :, 0], at[:, :, 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) >= 1.0
        change = moved - start
        apart = np.clip(np.sqrt((change * change).sum(axis=2)) - EXTRAPOLATE_AGREE_PX, 0.0, 1.0)
        out = start + (np.where(seen, deep, 0.0) * apart)[:, :, None] * change
    whole = forward.astype(np.float32, copy=True)
    whole[box] = out
    return whole


# RANSAC draws for that fit. 200 find one that 30 % of the ring agrees with at 0.99
# confidence (168 draws at that share; the fit is dropped below it); OpenCV's default 2000
# went on where fewer agree, for a fit then dropped. Keyed carphone_walker (a face close-up,
# whose ring is not one affine motion; 50 of its 120 fits dropped): its fits took 0.60 s of
# a 2.5 s run on one thread, 0.16 s at 200 draws, and came out the same.
_AFFINE_DRAWS = 200


def _affine_base(flow: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """The affine motion that best explains the valid flow around the holes, as a flow field.

    Camera moves (pan, zoom, roll) are affine to first order; a membrane through the
    boundary flow is not (it flattens a zoom inside a large hole). Fitted robustly (RANSAC)
    on valid pixels within _RING_PX of the holes; None when too few of them or no fit.
    """
    # The ring by a distance transform (linear time): a dilation by a disc of _RING_PX costs
    # per pixel as much as the disc is tall (at 1920x1080, 50 ms against 7).
    dist = cv2.distanceTransform(valid.astype(np.uint8), cv2.DIST_L2, 5)
    ys, xs = np.nonzero(valid & (dist <= _RING_PX + 0.5))
    if ys.size < 50:
        return None
    step = max(1, ys.size // 4000)
    ys, xs = ys[::step], xs[::step]
    src = np.stack([xs, ys], axis=1).astype(np.float32)
    dst = src + flow[ys, xs]
    model, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0,
                                          maxIters=_AFFINE_DRAWS)
    if model is None or inliers is None or inliers.sum() < 0.3 * len(src):
        return None
    # The motion minus the identity, applied to every pixel's (x, y).
    return cv2.transform(_grid(*valid.shape), (model - np.eye(2, 3)).astype(np.float32))


def _grid(h: int, w: int) -> np.ndarray:
    """Every pixel's (x, y), float32 (h, w, 2) (66 MB at 4K); read-only, kept for the last four
    sizes (a run uses two or three: working size, ROI at plate size)."""
    with _grids_lock:
        grid = _grids.get((h, w))
        if grid is None:
            gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            grid = np.stack([gx, gy], axis=2)
            grid.flags.writeable = False
            if len(_grids) >= 4:
                _grids.pop(next(iter(_grids)))
            _grids[(h, w)] = grid
        return grid


_grids: dict = {}
_grids_lock = threading.Lock()


def _push_pull(weighted: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Normalized-convolution pyramid. ``weighted`` = values * weight, ``(H, W, C)``; ``weight``
    in [0, 1] (a 0/1 validity, which pyrDown keeps in [0, 1])."""
    h, w = weight.shape
    if min(h, w) <= 2 or weight.min() > 0:
        return weighted / np.maximum(weight, 1e-12)[:, :, None]
    coarse_weighted = cv2.pyrDown(weighted)
    coarse_weight = cv2.pyrDown(weight)
    if coarse_weighted.ndim == 2:
        coarse_weighted = coarse_weighted[:, :, None]
    up = cv2.pyrUp(_push_pull(coarse_weighted, coarse_weight), dstsize=(w, h))
    if up.ndim == 2:
        up = up[:, :, None]
    # Where this level has full support use its own average; where it has partial support
    # blend with the coarser estimate in proportion to the support:
    #   weight * (weighted / weight) + (1 - weight) * up = weighted + (1 - weight) * up.
    return weighted + (1.0 - np.minimum(weight, 1.0))[:, :, None] * up


# ---------------------------------------------------------------------------- flow


def _luma_u8(image: np.ndarray) -> np.ndarray:
    """Display-referred float ``(H, W, C)`` -> 8-bit luma ``(H, W)`` for DIS."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        luma = image
    elif image.shape[2] == 1:
        luma = image[:, :, 0]
    else:
        luma = image[:, :, :3] @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return np.rint(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8)


def _work_shape(h: int, w: int, work_size: int) -> tuple[int, int]:
    scale = min(1.0, work_size / max(h, w))
    return max(8, round(h * scale)), max(8, round(w * scale))


def _hole(mask: np.ndarray | None, shape: tuple[int, int], margin: int) -> np.ndarray:
    """Resize a float mask to working ``shape`` and dilate it by ``margin``: bool ``(h, w)``."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != shape:
        # INTER_AREA keeps thin wires: any coverage shows up as a non-zero value.
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    hole = (mask > _MASK_THRESHOLD).astype(np.uint8)
    if hole.any() and margin > 0:
        k = 2 * margin + 1
        hole = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return hole.astype(bool)


def _dis(source: np.ndarray, dest: np.ndarray) -> np.ndarray:
    """DIS flow such that ``source(p) ~ dest(p + flow(p))``: float32 ``(h, w, 2)``.

    One DIS object per thread, reused: making one costs about as much as a 640x128 flow, and
    a call without an initial flow depends only on its two images."""
    return _thread_dis().calc(source, dest, None)


def _thread_dis():
    """This thread's DIS object (made on first use)."""
    dis = getattr(_local, "dis", None)
    if dis is None:
        dis = _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis


def _prefill(luma: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inpaint masked luma so the removed object's edges do not attract DIS patches."""
    if not mask.any():
        return luma
    return cv2.inpaint(luma, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def _to_full(flow_w: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize working-size flow to ``(h, w)`` and scale its vectors per axis."""
    hw, ww = flow_w.shape[:2]
    if (hw, ww) == (h, w):
        return flow_w
    full = cv2.resize(flow_w, (w, h), interpolation=cv2.INTER_LINEAR)
    full[:, :, 0] *= w / ww
    full[:, :, 1] *= h / hw
    return full


def consistency_error(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """``|F(p) + B(p + F(p))|`` in pixels, float32 ``(H, W)``.

    Args:
        forward: target->key flow ``(H, W, 2)``.
        backward: key->target flow ``(H, W, 2)`` (same size).

    Where ``p + F(p)`` falls outside the frame the error is :data:`OUT_OF_FRAME_ERROR`.
    """
    h, w = forward.shape[:2]
    at = _grid(h, w) + forward                  # where each target pixel lands in the key
    both = forward + _sample(backward, at, cv2.BORDER_REPLICATE)
    err = np.sqrt(np.einsum("ijk,ijk->ij", both, both))
    x, y = cv2.split(at)
    outside = (x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)
    err[outside] = OUT_OF_FRAME_ERROR
    return err


def cross_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary descriptors (uint8 rows, ORB's) matched both ways by Hamming distance: the
    (query index, train index) pairs each of which is the other's nearest, in query order.

    The pairs ``cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match`` returns, ties
    included (the lowest index of equally near ones, each way), found from one distance
    matrix instead of two passes: a bit that differs is a product of -1, so the distance is
    (bits - dot product) / 2 and the nearest is the largest dot product. One matrix product
    of +-1 floats (exact: integers far below 2**24) is about a third of the matcher's time
    (1270 ORB descriptors a frame: 14 ms against 43 on one thread), and a plate frame's
    pre-alignment was, after DIS, the largest part of a keyless fill's flows."""
    import torch   # here: core.flow is imported by host adapters that must not load torch (tests/test_layers.py)

    if len(query) == 0 or len(train) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    signs = [torch.from_numpy(np.unpackbits(d, axis=1).astype(np.float32) * 2 - 1) for d in (query, train)]
    dot = torch.mm(signs[0], signs[1].T).numpy()
    nearest, back = dot.argmax(axis=1), dot.argmax(axis=0)   # numpy: the first of equal maxima
    kept = np.nonzero(back[nearest] == np.arange(len(query)))[0]
    return kept, nearest[kept]


def _homography(target: FlowFrame, key: FlowFrame):
    """Target->key homography from ORB matches outside the holes (RANSAC), and how far it
    moves the matches that agree with it (the largest shift along x or y, pixels; the same
    either way round); or None.

    None when too few matches agree, or when the motion is small enough for DIS alone
    (no corner of the frame moves more than _PREALIGN_MIN_PX).
    """
    kt, dt = target.features
    kk, dk = key.features
    if dt is None or dk is None or len(kt) < 20 or len(kk) < 20:
        return None
    query, train = cross_matches(dt, dk)
    if query.size < 20:
        return None
    src = np.float32([kt[i].pt for i in query])
    dst = np.float32([kk[i].pt for i in train])
    hmat, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 2.0)
    if hmat is None or inliers is None or inliers.sum() < max(15, 0.25 * query.size):
        return None
    if _corner_motion(hmat, target.luma.shape) < _PREALIGN_MIN_PX:
        return None
    kept = inliers[:, 0] > 0
    reach = float(np.abs(dst[kept] - src[kept]).max())
    return hmat, reach


def _corner_motion(hmat: np.ndarray, shape: tuple[int, int]) -> float:
    """How far ``hmat`` moves the corners of an ``shape`` (h, w) frame: the largest shift along
    x or y, pixels."""
    h, w = shape
    corners = np.float32([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]])[:, None]
    moved = cv2.perspectiveTransform(corners, hmat)[:, 0]
    return float(np.abs(moved - corners[:, 0]).max())


def _evenly(where: np.ndarray, most: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the True pixels of ``where``, every n-th in row order: at most about ``most``
    (twice that at worst)."""
    ys, xs = np.nonzero(where)
    step = max(1, ys.size // most)
    return ys[::step], xs[::step]


def _explained(forward, error, known, hmat, work_shape) -> bool:
    """Whether the plain flow already follows ``hmat`` (working-size homography) on the known,
    in-frame target pixels: nearly all land within _EXPLAINED_PX (working pixels) of where
    the homography sends them. Then pre-aligning would find the same flow again: what made
    the plain flow look inconsistent was pixels leaving the frame, not a failed search."""
    h, w = forward.shape[:2]
    ys, xs = _evenly(known & (error < OUT_OF_FRAME_ERROR))
    if ys.size < 100:
        return False
    sx, sy = work_shape[1] / w, work_shape[0] / h
    px, py = xs.astype(np.float32) * sx, ys.astype(np.float32) * sy
    hx, hy = _apply_points(hmat, px, py)
    dx = (xs + forward[ys, xs, 0]) * sx - hx
    dy = (ys + forward[ys, xs, 1]) * sy - hy
    return float(np.mean(dx * dx + dy * dy > _EXPLAINED_PX ** 2)) < _EXPLAINED_SHARE


def _tracked(forward, error, known, reach: float, work_shape) -> bool:
    """Whether the plain flow (full size) is consistent on _TRACKED_SHARE of the ``known``
    pixels or more and _TRACKED_PERCENT % of those move less than ``reach`` working pixels
    (the pixels sampled as :func:`_explained` samples them: :func:`_evenly`)."""
    ys, xs = _evenly(known)
    if ys.size == 0:
        return False
    consistent = error[ys, xs] < _TRACKED_ERROR_PX
    if consistent.mean() < _TRACKED_SHARE:
        return False
    moves = forward[ys[consistent], xs[consistent]] * np.float32(work_shape[1] / forward.shape[1])
    return float(np.percentile(np.hypot(moves[:, 0], moves[:, 1]), _TRACKED_PERCENT)) < reach


def _apply(hmat: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Where ``hmat`` sends every pixel of an (h, w) grid: (map_x, map_y) float32."""
    grid = _grid(h, w)
    return _apply_points(hmat, grid[:, :, 0], grid[:, :, 1])


def _prealigned_dis(t_luma, k_luma, hmat):
    """DIS both ways on the key pre-warped by ``hmat``; flows composed back to plain ones."""
    h, w = t_luma.shape
    grid = _grid(h, w)
    gx, gy = grid[:, :, 0], grid[:, :, 1]
    hx, hy = _apply(hmat, h, w)                                   # target grid -> key position
    aligned = cv2.remap(k_luma, hx, hy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # t(p) ~ aligned(p + r(p)); aligned(p) ~ t(p + rb(p))
    residual, back_res = _both(lambda: _dis(t_luma, aligned), lambda: _dis(aligned, t_luma))
    # Forward: p -> H(p + r(p)).
    px, py = gx + residual[:, :, 0], gy + residual[:, :, 1]
    fx, fy = _apply_points(hmat, px, py)
    forward = np.stack([fx - gx, fy - gy], axis=2).astype(np.float32)
    # Backward: key pixel q sits at p = H^-1 q in the aligned grid.
    inv = np.linalg.inv(hmat)
    ix, iy = _apply(inv, h, w)
    rb = cv2.remap(back_res, ix, iy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    backward = np.stack([ix + rb[:, :, 0] - gx, iy + rb[:, :, 1] - gy], axis=2).astype(np.float32)
    return forward, backward


def _apply_points(hmat, x, y):
    """Where ``hmat`` sends the points (x, y) (arrays of one shape): (x', y') float32."""
    pts = cv2.perspectiveTransform(np.stack([x, y], axis=-1).reshape(-1, 1, 2).astype(np.float32), hmat)
    return pts[:, 0, 0].reshape(x.shape).astype(np.float32), pts[:, 0, 1].reshape(x.shape).astype(np.float32)


def _completed_w(forward_w, backward_w, t_hole, k_hole):
    """Raw working-size flows both ways -> both completed, still at working size."""
    # Target pixels whose match lies in the key's hole matched inpainted key content: as
    # untrustworthy as the target's own hole.
    def forward_done():
        lands_in_key_hole = warp(k_hole.astype(np.float32), forward_w, cv2.BORDER_CONSTANT) > 0 \
            if k_hole.any() else False
        return complete_flow(forward_w, ~(t_hole | lands_in_key_hole))

    # Key pixels whose match lies in the target's hole are as untrustworthy as the
    # hole itself: complete the backward flow there too, or the consistency error
    # would flag the whole neighbourhood of every mask.
    def backward_done():
        lands_in_hole = warp(t_hole.astype(np.float32), backward_w, cv2.BORDER_CONSTANT) > 0
        return complete_flow(backward_w, ~(k_hole | lands_in_hole))

    return _both(forward_done, backward_done)


def _full_pair(forward_w, backward_w, h, w):
    """Completed working-size flows -> full-size forward, backward and their error."""
    forward, backward = _to_full(forward_w, h, w), _to_full(backward_w, h, w)
    return forward, backward, consistency_error(forward, backward)


class FlowFrame:
    """An image prepared for :func:`flow_between`: what depends on it alone, computed once.

    A frame that serves several flows (the target against each of its sources, a keyframe
    against every target, a plate frame as target and then as source) is prepared once:
    8-bit luma at the working size with its masked region inpainted, the grown hole, and
    (on first use) its ORB features. ``tag`` (hashable, or None) names the frame for the
    cache of raw DIS flows between two tagged frames; two frames with one tag must have
    been prepared from the same pixels and mask.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray | None = None,
                 work_size: int = DEFAULT_WORK_SIZE, tag=None):
        h, w = image.shape[:2]
        if mask is not None and np.shape(mask)[:2] != (h, w):
            raise ValueError(f"mask has shape {np.shape(mask)}, expected ({h}, {w})")
        self.size, self.mask, self.tag = (h, w), mask, tag
        hw, ww = _work_shape(h, w, work_size)
        luma = _luma_u8(image)
        if (hw, ww) != (h, w):
            luma = cv2.resize(luma, (ww, hw), interpolation=cv2.INTER_AREA)
        self.luma = _prefill(luma, _hole(mask, (hw, ww), _PREFILL_MARGIN))
        self.hole = _hole(mask, (hw, ww), _MASK_MARGIN)
        self._known = self._features = None

    @property
    def known(self) -> np.ndarray:
        """bool (H, W) at full size: pixels outside the mask (not grown)."""
        if self._known is None:
            self._known = ~_hole(self.mask, self.size, 0)
        return self._known

    @property
    def features(self):
        """ORB (keypoints, descriptors) outside the grown hole."""
        if self._features is None:
            orb = cv2.ORB_create(nfeatures=1500, fastThreshold=10)
            self._features = orb.detectAndCompute(self.luma, (~self.hole).astype(np.uint8) * 255)
        return self._features


def _plain_pair(target: FlowFrame, key: FlowFrame, cache):
    """DIS target->key and key->target, each completed in the holes, at working size.

    Shared through ``cache`` (``get_or(key, make)``, keyed by tag pairs: core.filler's LRU or,
    between threads, SharedLRU): a pair is made once whichever of its frames is the target,
    kept one way round (the lower tag by repr first), and the reverse pair of frames reuses it
    swapped. The completions depend only on the two frames' holes, and each direction's valid
    region is the same whichever frame is the target, so the swap is exactly what computing
    the reverse pair would give."""
    def compute():
        raw = _both(lambda: _dis(target.luma, key.luma), lambda: _dis(key.luma, target.luma))
        return _completed_w(*raw, target.hole, key.hole)

    if cache is None or target.tag is None or key.tag is None:
        return compute()
    kept = pair_key(target.tag, key.tag)
    if kept[0] == target.tag:
        return cache.get_or(kept, compute)
    backward, forward = cache.get_or(kept, lambda: _plain_pair(key, target, None))
    return forward, backward


def pair_key(a, b) -> tuple:
    """The key of two tagged frames' DIS pair in :func:`_plain_pair`'s cache: their tags, the
    lower by repr first (one entry whichever frame is the target)."""
    return (a, b) if repr(a) <= repr(b) else (b, a)


def _aligned(target: FlowFrame, key: FlowFrame, forward, error, known, cache, motion: float = 0.0):
    """Pre-aligned flows target->key: (forward, backward, error), completed, at full size;
    None without a homography, where the matches that agree with it move by less than
    ``motion`` times the working frame's long side (or, not looked for, where the plain flow
    (``forward``, ``error``) is consistent and moves less: :func:`_tracked`), or where the
    plain flow already follows it (:func:`_explained`).

    Shared through ``cache`` as :func:`_plain_pair` shares the plain pair (both frames
    tagged): the homography and the pre-aligned DIS of two frames are found once, one way
    round (the lower tag by repr first: the key pre-warped onto the target), and the frames
    the other way round take that homography inverted and the two flows swapped. The
    completions are symmetric as in the plain pair; a reverse pair's flows are those of the
    pre-alignment found for the first way round (the same scene, warped the other way)."""
    h, w = target.size
    swapped = cache is not None and target.tag is not None and key.tag is not None \
        and pair_key(target.tag, key.tag)[0] != target.tag
    first, second = (key, target) if swapped else (target, key)
    shared = cache is not None and first.tag is not None and second.tag is not None
    reach = _TRACKED_REACH * motion * max(target.luma.shape)
    if motion and _tracked(forward, error, known, reach, target.luma.shape):
        return None

    def once(name, make):
        return cache.get_or((name, first.tag, second.tag), make) if shared else make()

    found = once("homography", lambda: _homography(first, second))
    if found is None:
        return None
    hmat, reach = found
    # Far motion is what DIS's coarse-to-fine search loses; measured where the homography
    # has matches: its corners can move far where the matches cover a small part of the
    # frame (a face close-up) while the scene itself moves little.
    if motion and reach < motion * max(target.luma.shape):
        return None
    towards = np.linalg.inv(hmat) if swapped else hmat   # target -> key
    if _explained(forward, error, known, towards, target.luma.shape):
        return None
    pair = once("prealigned", lambda: _completed_w(*_prealigned_dis(first.luma, second.luma, hmat),
                                                   first.hole, second.hole))
    return _full_pair(*(pair[::-1] if swapped else pair), h, w)


def flow(target: np.ndarray, key: np.ndarray,
         target_mask: np.ndarray | None = None, key_mask: np.ndarray | None = None,
         work_size: int = DEFAULT_WORK_SIZE, prealign: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Flow target->key, completed inside the masks, and its consistency error.

    Args:
        target: display-referred float ``(H, W, C)`` (or ``(H, W)``), [0, 1].
        key: same size as ``target``.
        target_mask: float ``(H, W)`` in [0, 1], 1 = target content to ignore (the
            region to fill); None = nothing masked.
        key_mask: same for the key: pixels whose content should not drive matching.
            For a fully clean keyframe pass None.
        work_size: long side (pixels) at which DIS runs.
        prealign: first align the key to the target with a homography fitted to ORB feature
            matches (when the motion is large enough), run DIS on what is left, and compose:
            large zooms and rolls, where DIS's coarse-to-fine search fails, come out right.

    Returns:
        ``(flow, error)``: float32 ``(H, W, 2)`` with ``target(p) ~ key(p + flow(p))``
        (channel 0 = x, 1 = y, pixels at full size), and float32 ``(H, W)``
        forward-backward error in pixels (see the module docstring).
    """
    h, w = target.shape[:2]
    if key.shape[:2] != (h, w):
        raise ValueError(f"key is {key.shape[1]}x{key.shape[0]}, target is {w}x{h}")
    for name, m in (("target_mask", target_mask), ("key_mask", key_mask)):
        if m is not None and np.shape(m)[:2] != (h, w):
            raise ValueError(f"{name} has shape {np.shape(m)}, expected ({h}, {w})")
    return flow_between(FlowFrame(target, target_mask, work_size), FlowFrame(key, key_mask, work_size), prealign)


def flow_between(target: FlowFrame, key: FlowFrame, prealign: bool = False,
                 dis_cache=None, aligned_cache=None, prealign_motion: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flow` on prepared frames (same size and working size); ``dis_cache``: see
    :func:`_plain_pair`; ``aligned_cache`` (default ``dis_cache``): see :func:`_aligned`;
    ``prealign_motion``: pre-align only where the matches that agree with the homography
    move by this share of the working frame's long side or more (:func:`_aligned`)."""
    if key.size != target.size or key.luma.shape != target.luma.shape:
        raise ValueError(f"key is {key.size[1]}x{key.size[0]}, target is {target.size[1]}x{target.size[0]}")
    h, w = target.size
    forward, backward, error = _full_pair(*_plain_pair(target, key, dis_cache), h, w)
    if prealign:
        known = target.known
        plain = float(np.mean(np.minimum(error[known], 20))) if known.any() else 0.0
        # DIS alone is right where it is consistent: pre-align only where it is not.
        aligned = _aligned(target, key, forward, error, known, dis_cache if aligned_cache is None else aligned_cache,
                           prealign_motion) if plain > _PREALIGN_ABOVE_PX else None
        # Pre-aligned flow where it is the more consistent of the two outside the holes
        # (one homography fits a camera move, not always a scene of several depths).
        if aligned is not None and np.mean(np.minimum(aligned[2][known], 20)) < plain:
            forward, backward, error = aligned
    if log.isEnabledFor(logging.DEBUG):
        log.debug("flow %dx%d at %dx%d: median |F| %.2f px, median error %.2f px",
                  w, h, target.luma.shape[1], target.luma.shape[0], float(np.median(np.linalg.norm(forward, axis=2))),
                  float(np.median(error)))
    return forward.astype(np.float32), error
