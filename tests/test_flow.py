"""core.flow: DIS flow on a known shift, completion inside masks, consistency error."""

import logging
import threading
import time

import cv2
import numpy as np
import pytest

from keyprop.core import flow as F

H, W = 240, 320
MARGIN = 24  # stay clear of the borders, where part of the target is not in the key


def _texture(h, w, seed=0):
    """Smooth random RGB texture in [0, 1], float32 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    base = (base - base.min()) / (base.max() - base.min())
    return np.dstack([base, base ** 2, 1 - base]).astype(np.float32)


def _shifted_pair(dx, dy, seed=0):
    """(target, key) with target(x, y) = key(x + dx, y + dy) exactly (integer shift)."""
    big = _texture(H + 40, W + 40, seed)
    key = big[20:20 + H, 20:20 + W]
    target = big[20 + dy:20 + dy + H, 20 + dx:20 + dx + W]
    return np.ascontiguousarray(target), np.ascontiguousarray(key)


def _inner(a):
    return a[MARGIN:-MARGIN, MARGIN:-MARGIN]


def test_recovers_known_shift_and_warp_reproduces_target():
    dx, dy = 5, -3
    target, key = _shifted_pair(dx, dy)
    flow, error = F.flow(target, key)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    assert error.shape == (H, W) and error.dtype == np.float32
    np.testing.assert_allclose(_inner(flow[:, :, 0]), dx, atol=0.5)
    np.testing.assert_allclose(_inner(flow[:, :, 1]), dy, atol=0.5)
    assert np.median(_inner(error)) < 0.2
    warped = F.warp(key, flow)
    assert np.abs(_inner(warped - target)).mean() < 0.01


def test_masked_region_is_completed_from_the_boundary():
    dx, dy = 3, -2
    target, key = _shifted_pair(dx, dy, seed=1)
    mask = np.zeros((H, W), np.float32)
    mask[80:160, 100:200] = 1.0
    # Something foreign in the target's hole (the rig to remove), absent from the key.
    target[80:160, 100:200] = 0.9
    flow, error = F.flow(target, key, target_mask=mask)
    hole = mask > 0
    np.testing.assert_allclose(flow[hole], np.broadcast_to([dx, dy], flow[hole].shape), atol=0.5)
    outside = np.ones((H, W), bool)
    outside[80:160, 100:200] = False
    outside &= np.pad(np.ones((H - 2 * MARGIN, W - 2 * MARGIN), bool), MARGIN)
    np.testing.assert_allclose(flow[outside], np.broadcast_to([dx, dy], flow[outside].shape),
                               atol=0.5)
    assert np.percentile(error[outside], 99) < 1.0


def test_reduced_working_size_scales_vectors_back():
    dx, dy = 6, 4
    target, key = _shifted_pair(dx, dy, seed=2)
    flow, _ = F.flow(target, key, work_size=160)  # half size
    np.testing.assert_allclose(np.median(_inner(flow), axis=(0, 1)), [dx, dy], atol=0.25)
    np.testing.assert_allclose(_inner(flow[:, :, 0]), dx, atol=0.75)
    np.testing.assert_allclose(_inner(flow[:, :, 1]), dy, atol=0.75)


def test_warp_convention_integer_shift_is_exact():
    image = _texture(20, 30)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[:, :, 0], flow[:, :, 1] = 2, 1  # sample at (x + 2, y + 1)
    out = F.warp(image, flow)
    np.testing.assert_array_equal(out[:-1, :-2], image[1:, 2:])
    assert F.warp(image[:, :, 0], flow).shape == (20, 30)
    assert F.warp(np.dstack([image, image]), flow).shape == (20, 30, 6)


def test_complete_flow_keeps_valid_and_fills_constant_exactly():
    flow = np.zeros((50, 60, 2), np.float32)
    flow[:, :, 0], flow[:, :, 1] = 1.5, -2.5
    valid = np.ones((50, 60), bool)
    valid[10:45, 5:40] = False
    noisy = flow.copy()
    noisy[~valid] = 99.0
    done = F.complete_flow(noisy, valid)
    np.testing.assert_array_equal(done[valid], flow[valid])
    np.testing.assert_allclose(done[~valid], flow[~valid], atol=1e-5)
    assert not F.complete_flow(noisy, np.zeros_like(valid)).any()


def test_consistency_error():
    fwd = np.zeros((30, 40, 2), np.float32)
    fwd[:, :, 0] = 3.0
    np.testing.assert_allclose(_inner_small(F.consistency_error(fwd, -fwd)), 0.0, atol=1e-6)
    np.testing.assert_allclose(_inner_small(F.consistency_error(fwd, fwd)), 6.0, atol=1e-6)
    # The rightmost pixels' matches leave the key.
    assert (F.consistency_error(fwd, -fwd)[:, -2:] == F.OUT_OF_FRAME_ERROR).all()


def _inner_small(a):
    return a[5:-5, 5:-5]


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="key is"):
        F.flow(np.zeros((10, 12, 3), np.float32), np.zeros((10, 13, 3), np.float32))
    with pytest.raises(ValueError, match="target_mask"):
        F.flow(np.zeros((10, 12, 3), np.float32), np.zeros((10, 12, 3), np.float32),
               target_mask=np.zeros((9, 12), np.float32))


def test_complete_flow_continues_a_zoom_and_roll_inside_a_large_hole():
    """A camera zoom with roll is affine: the hole's flow continues it (a membrane would flatten it)."""
    h, w = 120, 160
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    a = np.deg2rad(5.0)
    s = 1.15
    cx, cy = w / 2, h / 2
    x2 = s * (np.cos(a) * (gx - cx) - np.sin(a) * (gy - cy)) + cx + 3
    y2 = s * (np.sin(a) * (gx - cx) + np.cos(a) * (gy - cy)) + cy - 2
    true = np.stack([x2 - gx, y2 - gy], axis=2).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[25:95, 40:120] = False
    done = F.complete_flow(np.where(valid[:, :, None], true, 0.0).astype(np.float32), valid)
    assert np.abs(done - true)[~valid].max() < 0.05
    # Noisy valid flow (a few wild vectors) still gives a sensible completion.
    noisy = true.copy()
    rng = np.random.default_rng(0)
    wild = rng.random((h, w)) < 0.05
    noisy[wild] += rng.normal(0, 20, (int(wild.sum()), 2)).astype(np.float32)
    done = F.complete_flow(np.where(valid[:, :, None], noisy, 0.0).astype(np.float32), valid)
    assert np.abs(done - true)[~valid].mean() < 1.0


def test_prealign_follows_a_large_zoom_and_roll():
    """A 25 % zoom with 10 degrees of roll: DIS alone loses it, the feature homography does not."""
    target, key = _zoom_views()
    h, w = target.shape[:2]
    mask = np.zeros((h, w), np.float32)
    mask[70:130, 100:160] = 1
    inside = mask > 0
    errs = {}
    for prealign in (False, True):
        f, e = F.flow(target * (1 - mask[:, :, None]), key, target_mask=mask, prealign=prealign)
        errs[prealign] = float(np.abs(F.warp(key, f) - target)[inside].mean())
    assert errs[True] < 0.02
    assert errs[True] < 0.5 * errs[False]


def _fine_texture(seed: int) -> np.ndarray:
    """A 480x640 still of fine random texture, [0, 1]."""
    big = cv2.GaussianBlur(np.random.default_rng(seed).random((480, 640, 3)).astype(np.float32), (0, 0), 1.5)
    return (big - big.min()) / (big.max() - big.min())


def _camera(big: np.ndarray, scale: float, angle: float, h: int = 200, w: int = 260) -> np.ndarray:
    """An (h, w) camera on the middle of ``big``, zoomed by ``scale`` and rolled by ``angle`` degrees."""
    m = cv2.getRotationMatrix2D((float(w / 2), float(h / 2)), angle, scale)
    m[:, 2] += np.float32([big.shape[1] / 2, big.shape[0] / 2]) - np.float32([w / 2, h / 2])
    return cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def test_prealign_motion_pre_aligns_only_frames_that_move_that_far(monkeypatch):
    """flow_between(prealign_motion=s) pre-aligns where the matches that agree with the
    homography move by s times the working frame's long side or more: the 25 % zoom with 10
    degrees of roll moves them by about a fifth of the width, so 0.1 pre-aligns it and 0.4
    does not."""
    target, key = (F.FlowFrame(view) for view in _zoom_views())
    moved = F._homography(target, key)[1] / max(target.luma.shape)
    assert 0.1 < moved < 0.4
    calls = []
    real = F._prealigned_dis
    monkeypatch.setattr(F, "_prealigned_dis", lambda *a: calls.append(1) or real(*a))
    far, _ = F.flow_between(target, key, prealign=True, prealign_motion=0.4)
    assert calls == []
    np.testing.assert_array_equal(far, F.flow_between(target, key)[0])   # the plain flow
    F.flow_between(target, key, prealign=True, prealign_motion=0.1)
    assert calls == [1]


def test_prealign_motion_is_measured_where_the_homography_has_matches(monkeypatch):
    """The motion that decides pre-alignment is that of the matches, not of the frame's
    corners: a textured patch in the middle of a flat frame (a face close-up's features),
    zoomed and rolled, gives a homography whose corners move twice as far as anything
    matched. A frame that moves its matches by less than prealign_motion is not
    pre-aligned however far the homography throws the corners."""
    yy, xx = np.mgrid[:480, :640]
    patch = (np.abs(yy - 240) < 50) & (np.abs(xx - 320) < 60)
    big = np.where(patch[:, :, None], _fine_texture(5), np.float32(0.5))
    target, key = F.FlowFrame(_camera(big, 1.0, 0.0)), F.FlowFrame(_camera(big, 1.15, 6.0))
    hmat, reach = F._homography(target, key)
    long = max(target.luma.shape)
    corner = F._corner_motion(hmat, target.luma.shape)
    assert corner > 2 * reach, (corner, reach)
    calls = []
    real = F._prealigned_dis
    monkeypatch.setattr(F, "_prealigned_dis", lambda *a: calls.append(1) or real(*a))
    between = (corner + reach) / 2 / long   # the corners move this far, the matches do not
    far, _ = F.flow_between(target, key, prealign=True, prealign_motion=between)
    assert calls == []
    np.testing.assert_array_equal(far, F.flow_between(target, key)[0])   # the plain flow
    F.flow_between(target, key, prealign=True, prealign_motion=0.8 * reach / long)
    assert calls == [1]


def test_a_plain_flow_that_found_a_small_motion_looks_for_no_homography(monkeypatch):
    """Where pre-alignment must move far (prealign_motion, as between plate frames), a plain
    flow consistent on 40 % of the known pixels or more, 80 % of those moving less than half
    that distance, has found the frame's motion: no homography is looked for (ORB matching
    was a third of a plate pair's flow). A faster motion, or a flow that DIS lost (consistent
    on less), still looks; without prealign_motion (a keyframe) it always does. A fast object
    on a tenth of the pixels is not the frame's motion."""
    target, key = (F.FlowFrame(view) for view in _zoom_views())
    h, w = target.size
    far = F._TRACKED_REACH * 0.1 * max(target.luma.shape) * w / target.luma.shape[1]   # full-size pixels
    known = np.ones((h, w), bool)
    calls = []
    monkeypatch.setattr(F, "_homography", lambda *a: calls.append(1))
    rows = np.arange(h)[:, None] < int(h * 0.5)   # the flow consistent on half the frame

    def looks(moves, consistent=rows, motion=0.1):
        forward = np.zeros((h, w, 2), np.float32)
        forward[..., 0] = moves
        error = np.where(consistent, np.float32(0.2), np.float32(5.0)) * np.ones((h, w), np.float32)
        calls.clear()
        assert F._aligned(target, key, forward, error, known, None, motion) is None
        return calls == [1]

    assert not looks(0.9 * far)
    assert looks(1.1 * far)
    assert looks(0.9 * far, consistent=np.arange(h)[:, None] < int(h * 0.3))
    assert looks(0.9 * far, motion=0.0)
    object_moves = np.where(np.arange(w)[None, :] < w // 10, 3 * far, 0.5 * far)   # a tenth of the pixels
    assert not looks(object_moves)


def test_prepared_frames_and_the_dis_cache_give_the_plain_flow():
    """flow_between on prepared frames is flow(); the reverse pair reuses the cached DIS exactly."""
    from keyprop.core.filler import LRU

    target, key = _shifted_pair(4, 2, seed=3)
    mask_t = np.zeros((H, W), np.float32)
    mask_t[60:120, 80:140] = 1
    mask_k = np.zeros((H, W), np.float32)
    mask_k[100:150, 200:240] = 1
    a = F.FlowFrame(target, mask_t, 256, tag="a")
    b = F.FlowFrame(key, mask_k, 256, tag="b")
    cache = LRU(4)
    for first, second, tm, km, t_img, k_img in ((a, b, mask_t, mask_k, target, key),
                                                (b, a, mask_k, mask_t, key, target)):
        got = F.flow_between(first, second, prealign=True, dis_cache=cache)
        want = F.flow(t_img, k_img, target_mask=tm, key_mask=km, work_size=256, prealign=True)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert list(cache) == [("a", "b")]  # the second call found the pair the first one stored


def _zoom_views(h=200, w=260):
    """Two (h, w) views of one fine texture: as it is, and zoomed 25 % with 10 degrees of roll."""
    big = _fine_texture(4)
    return _camera(big, 1.0, 0.0, h, w), _camera(big, 1.25, 10.0, h, w)


def test_a_pairs_prealignment_is_found_once_for_both_ways(monkeypatch, caplog):
    """Two tagged frames far apart (a zoom and a roll): the first way round (the lower tag
    first) is exactly the uncached flow; the other way round takes its homography and its
    pre-aligned flows swapped (no second homography, no second DIS), and still follows the
    scene."""
    from keyprop.core.filler import LRU

    first_img, second_img = _zoom_views()
    h, w = first_img.shape[:2]
    mask_a = np.zeros((h, w), np.float32)
    mask_a[70:130, 100:160] = 1
    mask_b = np.zeros((h, w), np.float32)
    mask_b[20:60, 30:80] = 1
    a = F.FlowFrame(first_img * (1 - mask_a[:, :, None]), mask_a, tag="a")
    b = F.FlowFrame(second_img * (1 - mask_b[:, :, None]), mask_b, tag="b")
    calls = []
    for name in ("_homography", "_prealigned_dis"):
        real = getattr(F, name)
        monkeypatch.setattr(F, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    cache = LRU(8)
    ab = F.flow_between(a, b, prealign=True, dis_cache=cache)
    want = F.flow(first_img * (1 - mask_a[:, :, None]), second_img * (1 - mask_b[:, :, None]),
                  target_mask=mask_a, key_mask=mask_b, prealign=True)
    assert np.array_equal(ab[0], want[0]) and np.array_equal(ab[1], want[1])
    assert calls.count("_prealigned_dis") == 2   # the cached pair, then flow()'s own
    with caplog.at_level(logging.DEBUG, logger=F.__name__):   # the debug line names the sizes
        ba = F.flow_between(b, a, prealign=True, dis_cache=cache)
    assert any("flow 260x200 at" in r.getMessage() for r in caplog.records)
    assert calls.count("_homography") == 2 and calls.count("_prealigned_dis") == 2
    assert {k[0] for k in cache if len(k) == 3} == {"homography", "prealigned"}
    # b -> a follows the scene where a is not masked: b's pixels land on a's.
    inside = (mask_b == 0) & (cv2.warpAffine(np.ones((h, w), np.float32), np.eye(2, 3), (w, h)) > 0)
    landed = F.warp(first_img, ba[0])
    ok = inside & (ba[1] < 1.0)
    assert ok.mean() > 0.3 and float(np.abs(landed - second_img)[ok].mean()) < 0.03


def test_prealign_is_skipped_when_the_plain_flow_follows_the_camera(monkeypatch):
    """A thin strip panning 10 px: pixels leaving the frame make DIS look inconsistent, but its
    flow is the homography's; a pre-aligned DIS would find the same flow and is not run."""
    big = _texture(400, 160, seed=5)
    h, w = 360, 96
    target = np.ascontiguousarray(big[20:20 + h, 30:30 + w])
    key = np.ascontiguousarray(big[20:20 + h, 40:40 + w])   # target(x) = key(x - 10)
    calls = []
    real = F._prealigned_dis
    monkeypatch.setattr(F, "_prealigned_dis", lambda *a: calls.append(1) or real(*a))
    f, e = F.flow(target, key, prealign=True)
    assert F.OUT_OF_FRAME_ERROR in e  # the inconsistency that used to trigger pre-alignment
    assert calls == []
    np.testing.assert_allclose(f[:, 20:-20, 0], -10, atol=0.5)


def test_two_directions_on_two_threads_give_the_serial_result(monkeypatch):
    """The two directions of each flow (DIS, completion; pre-aligned too) run on a helper
    thread beside the caller: the result is exactly the one computed in turn, also when
    several threads ask for flows at once."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    big = cv2.GaussianBlur(rng.random((480, 640, 3)).astype(np.float32), (0, 0), 1.5)
    big = (big - big.min()) / (big.max() - big.min())
    h, w = 200, 260
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 8.0, 1.2)
    m[:, 2] += np.float32([320 - w / 2, 240 - h / 2])
    target = np.ascontiguousarray(big[140:140 + h, 190:190 + w])
    key = cv2.warpAffine(big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    mask = np.zeros((h, w), np.float32)
    mask[70:130, 100:160] = 1
    args = (target, key)
    kwargs = dict(target_mask=mask, key_mask=np.roll(mask, 40, axis=1), prealign=True)
    threaded = F.flow(*args, **kwargs)
    with ThreadPoolExecutor(3) as pool:
        several = list(pool.map(lambda _: F.flow(*args, **kwargs), range(3)))
    monkeypatch.setattr(F, "_both", lambda first, second: (first(), second()))
    serial = F.flow(*args, **kwargs)
    for got in [threaded] + several:
        assert np.array_equal(got[0], serial[0]) and np.array_equal(got[1], serial[1])


def test_push_pull_is_the_normalized_convolution_pyramid():
    """The fast blend (weighted + (1 - weight) * coarser) is the textbook one: each level's own
    average where it has support, blended with the coarser estimate by the support."""
    def textbook(weighted, weight):
        h, w = weight.shape
        if min(h, w) <= 2 or weight.min() > 0:
            return weighted / np.maximum(weight, 1e-12)[:, :, None]
        coarse = textbook(cv2.pyrDown(weighted).reshape((h + 1) // 2, (w + 1) // 2, -1), cv2.pyrDown(weight))
        up = cv2.pyrUp(coarse, dstsize=(w, h)).reshape(h, w, -1)
        alpha = np.clip(weight, 0.0, 1.0)[:, :, None]
        return alpha * (weighted / np.maximum(weight, 1e-12)[:, :, None]) + (1 - alpha) * up

    rng = np.random.default_rng(3)
    for channels in (1, 2):
        valid = rng.random((97, 61)) > 0.7
        valid[20:70, 10:40] = False
        weight = valid.astype(np.float32)
        values = rng.normal(size=(97, 61, channels)).astype(np.float32) * weight[:, :, None]
        got, want = F._push_pull(values, weight), textbook(values, weight)
        assert got.shape == want.shape == (97, 61, channels)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_affine_base_reproduces_an_affine_motion_from_the_ring():
    """The motion fitted on the ring around the holes (by a distance transform) is the motion."""
    valid = np.ones((120, 200), bool)
    valid[40:80, 90:104] = False
    gx, gy = np.meshgrid(np.arange(200, dtype=np.float32), np.arange(120, dtype=np.float32))
    # A zoom about (100, 60) plus a shift: affine, so the fit reproduces it everywhere.
    flow = np.dstack([0.03 * (gx - 100) + 2.0, 0.03 * (gy - 60) - 1.0]).astype(np.float32)
    base = F._affine_base(np.where(valid[:, :, None], flow, 0.0).astype(np.float32), valid)
    np.testing.assert_allclose(base, flow, atol=1e-3)


def test_affine_base_finds_a_motion_a_third_of_the_ring_follows():
    """With its RANSAC draws capped (_AFFINE_DRAWS), the fit still finds a motion that a third
    of the ring follows (the share below which it is dropped is 30 %), the rest of the ring
    moving at random; and drops one that a fifth follows."""
    rng = np.random.default_rng(5)
    valid = np.ones((120, 200), bool)
    valid[40:80, 90:104] = False
    gx, gy = np.meshgrid(np.arange(200, dtype=np.float32), np.arange(120, dtype=np.float32))
    flow = np.dstack([0.03 * (gx - 100) + 2.0, 0.03 * (gy - 60) - 1.0]).astype(np.float32)
    for share, found in ((0.34, True), (0.2, False)):
        noisy = np.where((rng.random(valid.shape) < share)[:, :, None], flow,
                         rng.uniform(-8, 8, flow.shape).astype(np.float32))
        base = F._affine_base(np.where(valid[:, :, None], noisy, 0.0).astype(np.float32), valid)
        if found:
            np.testing.assert_allclose(base, flow, atol=0.05)
        else:
            assert base is None


def _box_hole(h, w, y0, y1, x0, x1):
    hole = np.zeros((h, w), np.float32)
    hole[y0:y1, x0:x1] = 1
    return hole


def test_extrapolate_takes_the_sources_motion_deep_in_the_hole():
    """The surroundings move 1 px right; what the hole hides moves 5 px (the source's own
    flow to the frame beyond says so where it shows it): deep in the hole the flow becomes
    5 px, near its border (under EXTRAPOLATE_DEPTH_PX) it stays the surroundings' 1 px, and
    where the source's own hole hides the content it stays too."""
    h, w = 120, 160
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = 1.0
    beyond = np.zeros((h, w, 2), np.float32)
    beyond[30:90, 40:120, 0] = 5.0            # the hidden thing's motion, seen in the source
    beyond[~(beyond[..., 0] > 0)] = (1.0, 0.0)
    target_hole = _box_hole(h, w, 30, 90, 40, 120)
    source_hole = _box_hole(h, w, 30, 90, 100, 140)   # hides the right end of what the target's hole needs
    error = np.zeros((h, w), np.float32)
    error[30:90, 60:70] = F.OUT_OF_FRAME_ERROR      # leaves the frame beyond: not found there
    out = F.extrapolate(forward, lambda: (beyond, error), target_hole, source_hole)
    assert out.dtype == np.float32 and out.shape == forward.shape
    deep = (slice(45, 75), slice(75, 94))
    np.testing.assert_allclose(out[deep], np.broadcast_to([5.0, 0.0], out[deep].shape), atol=1e-5)
    np.testing.assert_array_equal(out[30:33, 40:120], forward[30:33, 40:120])   # the border band
    np.testing.assert_array_equal(out[:30], forward[:30])                        # outside the hole
    np.testing.assert_array_equal(out[45:75, 100:110], forward[45:75, 100:110])  # lands in the source's hole
    np.testing.assert_array_equal(out[45:75, 60:65], forward[45:75, 60:65])      # lands where it was not found


def test_extrapolate_keeps_the_surroundings_motion_where_the_two_agree():
    """A camera move: the source's measured motion differs from the completed one by noise
    (under EXTRAPOLATE_AGREE_PX) and the completed flow stays exactly as it was."""
    h, w = 100, 120
    rng = np.random.default_rng(0)
    forward = np.dstack([np.full((h, w), 2.0), np.full((h, w), -1.0)]).astype(np.float32)
    beyond = forward + rng.uniform(-0.3, 0.3, forward.shape).astype(np.float32)
    hole = _box_hole(h, w, 20, 80, 20, 100)
    none = np.zeros((h, w), np.float32)
    out = F.extrapolate(forward, lambda: (beyond, none), hole, none)
    np.testing.assert_array_equal(out, forward)
    # No pixel deep enough (a wire): the same array back, the flow beyond never found.
    thin = _box_hole(h, w, 50, 58, 10, 110)
    assert F.extrapolate(forward, lambda: pytest.fail("found the flow beyond for nothing"), thin, none) is forward


def test_extrapolate_over_the_deep_pixels_box_is_the_whole_frames_steps():
    """The steps run over the bounding box of the pixels deep in the hole; each pixel's
    result depends on its own flow alone, so it is the whole frame's computation: every
    pixel equal to the formula applied everywhere (random flows reaching past the frame,
    two holes far apart, a source hole and errors)."""
    h, w = 90, 140
    rng = np.random.default_rng(3)
    forward = rng.uniform(-6, 6, (h, w, 2)).astype(np.float32)
    beyond = rng.uniform(-9, 9, (h, w, 2)).astype(np.float32)
    error = rng.uniform(0, 2 * F.EXTRAPOLATE_MAX_ERROR_PX, (h, w)).astype(np.float32)
    target_hole = _box_hole(h, w, 5, 45, 3, 40) + _box_hole(h, w, 50, 88, 100, 136)
    source_hole = _box_hole(h, w, 20, 70, 30, 110)
    out = F.extrapolate(forward, lambda: (beyond, error), target_hole, source_hole)

    depth = cv2.distanceTransform((target_hole > 0).astype(np.uint8), cv2.DIST_L2, 5)
    deep = np.clip((depth - F.EXTRAPOLATE_DEPTH_PX) / F.EXTRAPOLATE_RAMP_PX, 0.0, 1.0)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    shown = ((source_hole <= 0) & (error < F.EXTRAPOLATE_MAX_ERROR_PX)).astype(np.float32)
    want = forward
    for _ in range(F.EXTRAPOLATE_STEPS):
        ax, ay = gx + want[..., 0], gy + want[..., 1]
        moved = cv2.remap(beyond, ax, ay, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        seen = cv2.remap(shown, ax, ay, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) >= 1.0
        change = moved - forward
        apart = np.clip(np.sqrt((change * change).sum(axis=2)) - F.EXTRAPOLATE_AGREE_PX, 0.0, 1.0)
        want = forward + (np.where(seen, deep, 0.0) * apart)[:, :, None] * change
    assert (deep > 0).sum() > 500 and not np.array_equal(out, forward)
    np.testing.assert_array_equal(out, want.astype(np.float32))


def _bf_pairs(query, train):
    return [(m.queryIdx, m.trainIdx) for m in cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(query, train)]


def test_cross_matches_are_the_brute_force_matchers_in_its_order():
    """cross_matches gives cv2.BFMatcher(NORM_HAMMING, crossCheck=True).match's pairs, in
    its order (findHomography's RANSAC takes them in order): on the ORB features of two real
    views, and on descriptors with many ties (few distinct rows, repeated), where the
    lowest index of equally near ones must win each way as it does there."""
    first_img, second_img = _zoom_views()
    query = F.FlowFrame(first_img).features[1]
    train = F.FlowFrame(second_img).features[1]
    assert query is not None and len(query) > 100 and len(train) > 100
    pairs = _bf_pairs(query, train)
    assert len(pairs) > 50
    got = F.cross_matches(query, train)
    assert list(zip(got[0].tolist(), got[1].tolist())) == pairs
    rng = np.random.default_rng(3)
    for rows, distinct in ((300, 5), (200, 40), (64, 64)):
        palette = rng.integers(0, 256, (distinct, 32), dtype=np.uint8)
        a = palette[rng.integers(0, distinct, rows)]
        b = palette[rng.integers(0, distinct, rows + 17)]
        b[::7, 0] ^= 1   # some rows one bit away: nearest but not equal
        got = F.cross_matches(a, b)
        assert list(zip(got[0].tolist(), got[1].tolist())) == _bf_pairs(a, b)
    empty = F.cross_matches(np.zeros((0, 32), np.uint8), query)
    assert empty[0].size == 0 and empty[1].size == 0


def _offering_thread(tag, first, second, out):
    def run():
        F.directions_in_turn()
        with F.offering(tag):
            out["pair"] = F._both(first, second)
    thread = threading.Thread(target=run, name="keyprop-ahead_test")
    thread.start()
    return thread


def test_a_thread_waiting_for_a_tag_takes_the_other_direction_offered_under_it():
    """A lookahead thread's _both (directions in turn) offers its second half while it computes
    the first; help_until on the thread waiting for that tag computes it there, and the
    offering thread gets its value. Under another tag nothing is taken: the offering thread
    computes both in turn."""
    ran, out, release = {}, {}, threading.Event()

    def first():
        ran["first"] = threading.current_thread().name
        release.wait(5)   # only the other thread can release it: by computing second
        return 1

    def second():
        ran["second"] = threading.current_thread().name
        release.set()
        return 2

    thread = _offering_thread(7, first, second, out)
    F.help_until(lambda: not thread.is_alive(), 7)
    thread.join(5)
    assert release.is_set() and out["pair"] == (1, 2)
    assert ran == {"first": "keyprop-ahead_test", "second": threading.current_thread().name}

    ran.clear()
    out.clear()

    def slow_first():
        ran["first"] = threading.current_thread().name
        time.sleep(0.2)   # time enough for a helper to take the offer, were it its tag
        return 1

    thread = _offering_thread(8, slow_first, lambda: ran.setdefault("second", threading.current_thread().name), out)
    F.help_until(lambda: not thread.is_alive(), 7)
    thread.join(5)
    assert ran == {"first": "keyprop-ahead_test", "second": "keyprop-ahead_test"}
    assert not F._offers
