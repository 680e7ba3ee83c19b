"""Fusing flow-warped sources (core/fusion.py): exposure matching, per-pixel evidence, no
averaging of content that disagrees, plate sources beside keyframes."""
import numpy as np

from keyprop.core.api import Settings, fill_frames
from keyprop.core.flow import OUT_OF_FRAME_ERROR
from keyprop.core.fusion import Warped, fuse, match_colour, source_score
from keyprop.core.runtime import create_engine


def texture(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    import cv2

    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return 0.15 + 0.7 * (t - t.min()) / (t.max() - t.min())


def box_hole(h=64, w=80):
    hole = np.zeros((h, w), np.float32)
    hole[20:44, 30:50] = 1
    return hole


def test_match_colour_recovers_an_exposure_gain():
    truth = texture()
    hole = box_hole()
    gain = np.float32([1.3, 1.1, 0.8])
    # The source is the same picture at another exposure (a gain in linear light, gamma 2.2).
    source = np.clip((truth ** 2.2 / gain ** 2.2) ** (1 / 2.2), 0, 1).astype(np.float32)
    matched = match_colour(source, truth * (1 - hole[:, :, None]), hole, np.zeros_like(hole))
    inside = hole > 0
    assert np.abs(source - truth)[inside].mean() > 0.03
    assert np.abs(matched - truth)[inside].mean() < 0.01


def test_match_colour_leaves_source_alone_without_a_ring():
    truth = texture()
    hole = np.ones(truth.shape[:2], np.float32)
    src = truth * 0.5
    assert match_colour(src, truth, hole, np.zeros_like(hole)) is src


def test_best_matching_source_dominates_and_network_fills_what_none_shows():
    truth = texture()
    hole = box_hole()
    target = truth * (1 - hole[:, :, None])
    good = truth.copy()
    bad = np.clip(truth + 0.2, 0, 1)       # off by 0.2 around the hole as well: a poor match
    zero_err = np.zeros_like(hole)
    net = np.full_like(truth, 0.5)
    fused = fuse([Warped(good, zero_err), Warped(bad, zero_err)], target, hole, net)
    inside = hole > 0
    assert np.abs(fused.fill - truth)[inside].max() < 0.01
    assert (fused.labels[inside] == 0).all()
    # A source whose flow leaves the frame everywhere counts for nothing: the network's fill stays.
    gone = np.full_like(hole, OUT_OF_FRAME_ERROR)
    fused = fuse([Warped(bad, gone)], target, hole, net)
    np.testing.assert_allclose(fused.fill, net, atol=1e-6)
    assert (fused.labels == -1).all()
    # source_score: low where the source matches, usable where the flow stays in frame.
    score, usable = source_score(good, target, hole, zero_err)
    assert usable.all() and score[inside].max() < 0.01


def test_equally_good_sources_are_averaged():
    truth = texture()
    hole = box_hole()
    rng = np.random.default_rng(1)
    noisy = [np.clip(truth + rng.normal(0, 0.03, truth.shape), 0, 1).astype(np.float32) for _ in range(4)]
    target = truth * (1 - hole[:, :, None])
    z = np.zeros_like(hole)
    fused = fuse([Warped(n, z) for n in noisy], target, hole)
    inside = hole > 0
    single = np.abs(noisy[0] - truth)[inside].mean()
    assert np.abs(fused.fill - truth)[inside].mean() < 0.7 * single


def test_sources_that_disagree_inside_the_hole_are_never_averaged():
    """Two sources match the ring equally well but show different things inside the hole (a
    walker in one of them): the fill takes one of them per pixel, never their mean (a ghost)."""
    truth = texture()
    hole = box_hole()
    target = truth * (1 - hole[:, :, None])
    z = np.zeros_like(hole)
    other = truth.copy()
    other[24:40, 34:46] = np.float32([0.9, 0.1, 0.1])     # something inside the hole only
    fused = fuse([Warped(truth, z, 1), Warped(other, z, 1)], target, hole)
    region = np.zeros(hole.shape, bool)
    region[24:40, 34:46] = True
    mean = 0.5 * (truth + other)
    nearest = np.minimum(np.abs(fused.fill - truth).mean(axis=2), np.abs(fused.fill - other).mean(axis=2))
    assert np.median(nearest[region]) < 0.02
    assert np.median(np.abs(fused.fill - mean).mean(axis=2)[region]) > 0.1


def test_consensus_inside_the_hole_outvotes_the_odd_source():
    """Three sources match the ring alike; inside the hole two agree and one shows content that
    has since moved: the two that agree fill it."""
    truth = texture()
    hole = box_hole()
    target = truth * (1 - hole[:, :, None])
    z = np.zeros_like(hole)
    moved = truth.copy()
    moved[22:42, 32:48] = np.float32([0.1, 0.8, 0.2])
    fused = fuse([Warped(moved, z, 1), Warped(truth, z, 2), Warped(truth, z, 4)], target, hole)
    inside = hole > 0
    assert np.abs(fused.fill - truth)[inside].mean() < 0.01


def test_a_near_frame_wins_over_a_far_one_when_the_evidence_is_equal():
    truth = texture()
    hole = box_hole()
    target = truth * (1 - hole[:, :, None])
    z = np.zeros_like(hole)
    far = truth.copy()
    far[24:40, 34:46] = 0.9
    fused = fuse([Warped(far, z, 30), Warped(truth, z, 1)], target, hole)
    assert (fused.labels[hole > 0] == 1).mean() > 0.9


def test_plate_frames_serve_beside_keyframes():
    """The camera pans out and back: mid-shot, the hole shows background that is outside both
    keyframes' view. Plate frames next to the target, where the moving rig has uncovered it,
    show it."""
    import cv2

    h, w = 96, 128
    offsets = [0, 12, 24, 36, 48, 36, 24, 12, 0]
    rng = np.random.default_rng(5)
    wide = cv2.GaussianBlur(rng.random((h, w + 60, 3)).astype(np.float32), (0, 0), 2.0)
    wide = (wide - wide.min()) / (wide.max() - wide.min())
    truths = [np.ascontiguousarray(wide[:, o:o + w]) for o in offsets]
    masks, frames = [], []
    for i, t in enumerate(truths):
        m = np.zeros((h, w), np.float32)
        m[30:70, 10 + 20 * i:30 + 20 * i] = 1 if i < 6 else 0
        masks.append(m)
        frames.append(t if i in (0, 8) else np.where(m[:, :, None] > 0, np.float32(0.05), t))
    engine = create_engine("torch", model="preset:test", threads=2)
    # (temporal off: a carried fill would bring the plate frames' content in by another way)
    out_with = fill_frames(frames, masks, [0, 8], engine, Settings(threads=2, temporal=False))
    out_without = fill_frames(frames, masks, [0, 8], engine, Settings(threads=2, plate_sources=False, temporal=False))
    inside = masks[4] > 0
    err_with = np.abs(out_with[4] - truths[4])[inside].mean()
    err_without = np.abs(out_without[4] - truths[4])[inside].mean()
    assert err_with < 0.5 * err_without
    assert err_with < 0.03


class CountingEngine:
    """The real test engine, counting how often the network fills."""

    def __init__(self, engine):
        self.engine, self.fills = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def fill(self, *args, **kwargs):
        self.fills += 1
        return self.engine.fill(*args, **kwargs)


def test_network_runs_only_where_no_source_shows_the_hole():
    import cv2

    h, w = 96, 128
    rng = np.random.default_rng(2)
    wide = cv2.GaussianBlur(rng.random((h, w + 40, 3)).astype(np.float32), (0, 0), 2.0)
    truths = [np.ascontiguousarray(wide[:, 4 * i:4 * i + w]) for i in range(4)]
    masks = []
    for i in range(4):
        m = np.zeros((h, w), np.float32)
        m[30:60, 40 + 8 * i:56 + 8 * i] = 1
        masks.append(m)
    frames = [truths[0]] + [np.where(m[:, :, None] > 0, np.float32(0.0), t) for m, t in zip(masks[1:3], truths[1:3])] \
        + [truths[3]]
    engine = CountingEngine(create_engine("torch", model="preset:test", threads=2))
    out = fill_frames(frames, masks, [0, 3], engine, Settings(threads=2))
    assert engine.fills == 0                           # the keyframes show every hole pixel
    assert np.abs(out[1] - truths[1])[masks[1] > 0].mean() < 0.02
    # A static occluder and no keyframes: nothing shows the hole, the network fills it.
    still = [np.where(masks[1][:, :, None] > 0, np.float32(0.0), truths[1]) for _ in range(3)]
    engine.fills = 0
    fill_frames(still, [masks[1]] * 3, [], engine, Settings(threads=2, temporal=False))
    assert engine.fills == 3
    # Carried along the shot (core.temporal), the first frame's fill shows the next frames'
    # holes: the network runs once per temporal window.
    engine.fills = 0
    fill_frames(still, [masks[1]] * 3, [], engine, Settings(threads=2))
    assert engine.fills == 1


def test_a_sliver_no_source_shows_is_filled_from_its_surroundings_without_the_network():
    """A camera pan: the keyframes show the hole except a few columns at the frame's edge where
    their flows leave the frame. Those are filled from the context; the network does not run."""
    import cv2

    h, w = 96, 128
    rng = np.random.default_rng(3)
    wide = cv2.GaussianBlur(rng.random((h, w + 40, 3)).astype(np.float32), (0, 0), 2.0)
    truths = [np.ascontiguousarray(wide[:, 2 * i:2 * i + w]) for i in range(3)]   # 2 px a frame
    mask = np.zeros((h, w), np.float32)
    mask[30:60, 0:60] = 1                     # reaches the frame's left edge
    frames = [truths[0], np.where(mask[:, :, None] > 0, np.float32(0.0), truths[1]), truths[2]]
    engine = CountingEngine(create_engine("torch", model="preset:test", threads=2))
    empty = np.zeros_like(mask)
    out = fill_frames(frames, [empty, mask, empty], [2], engine, Settings(threads=2, plate_sources=False, temporal=False))
    assert engine.fills == 0
    assert np.abs(out[1] - truths[1])[mask > 0].mean() < 0.03


def test_a_small_hole_is_fused_over_its_box_and_fills_as_over_the_whole_area(monkeypatch):
    """A frame's sources are warped, fused and solved over its hole's box and FUSION_MARGIN
    around it, not over the whole working area its ROI spans (here the shot's other masks
    stretch the ROI across the frame, as a walker's path does). The fill is the one fusing
    over the whole area gives, but for the push-pull completions' far reach, and the plate
    stays bit for bit outside the composite's reach."""
    import cv2

    from keyprop.core import filler

    h, w = 192, 320
    rng = np.random.default_rng(8)
    wide = cv2.GaussianBlur(rng.random((h, w + 40, 3)).astype(np.float32), (0, 0), 2.0)
    wide = 0.1 + 0.8 * (wide - wide.min()) / (wide.max() - wide.min())
    truths = [np.ascontiguousarray(wide[:, 3 * i:3 * i + w]) for i in range(4)]
    masks = [np.zeros((h, w), np.float32) for _ in range(4)]
    masks[1][20:50, 24:56] = 1
    masks[2][140:180, 260:300] = 1   # the ROI spans the frame
    frames = [np.where(m[:, :, None] > 0, np.float32(0.0), t) for m, t in zip(masks, truths)]
    engine = create_engine("torch", model="preset:test", threads=2)
    fused = []
    real_fuse = filler.fuse
    monkeypatch.setattr(filler, "fuse", lambda warps, target, hole, *a: fused.append(hole.shape) or
                        real_fuse(warps, target, hole, *a))
    settings = Settings(threads=2, max_sources=4)
    boxed = fill_frames(frames, masks, [0, 3], engine, settings)
    assert fused and all(fh * fw < 0.5 * h * w for fh, fw in fused)   # (working size = plate size here)
    monkeypatch.setattr(filler, "FUSION_MARGIN", 10 ** 6)
    fused.clear()
    whole = fill_frames(frames, masks, [0, 3], engine, settings)
    assert fused == [(h, w), (h, w)]
    for i in (1, 2):
        inside = masks[i] > 0
        assert np.abs(boxed[i] - truths[i])[inside].mean() < 0.02
        assert np.abs(boxed[i] - whole[i])[inside].mean() < 0.003
        reach = cv2.dilate(masks[i], np.ones((15, 15), np.uint8)) > 0
        assert np.array_equal(boxed[i][~reach], frames[i][~reach])
