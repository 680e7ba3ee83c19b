"""Temporal propagation (core/temporal.py): fixed windows on frame numbers, chains of fills,
and fills carried from frame to frame."""
import cv2
import numpy as np

from keyprop.core.api import Settings, fill_frames
from keyprop.core.runtime import create_engine
from keyprop.core.temporal import WINDOW, chain, same_window, window_start


def test_windows_are_fixed_on_frame_numbers():
    assert WINDOW == 8
    assert window_start(0) == 0 and window_start(7) == 0 and window_start(8) == 8
    assert window_start(1003) == 1000 and window_start(-1) == -8
    assert same_window(1000, 1007) and not same_window(1007, 1008)


def test_chain_is_the_run_of_filled_frames_before_a_frame_in_its_window():
    filled = lambda f: f != 1004   # noqa: E731 - e.g. 1004 is a keyframe
    assert chain(1003, filled) == [1000, 1001, 1002]
    assert chain(1000, filled) == []                 # a window's first frame depends on nothing
    assert chain(1006, filled) == [1005]             # broken by the keyframe
    assert chain(1008, filled) == []


def grainy_static_shot(n=6, h=72, w=96, seed=0):
    """A locked-off camera, fresh grain every frame, an occluder that never moves: nothing ever
    shows the hole, so each frame's own fill is all there is."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3.0)
    base = 0.2 + 0.6 * (base - base.min()) / (base.max() - base.min())
    mask = np.zeros((h, w), np.float32)
    mask[24:48, 36:60] = 1
    truths = [np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1).astype(np.float32) for _ in range(n)]
    plates = [np.where(mask[:, :, None] > 0, np.float32(0.05), t) for t in truths]
    return plates, [mask] * n


def test_fills_are_carried_within_a_window_and_not_across():
    plates, masks = grainy_static_shot()
    engine = create_engine("torch", model="preset:test", threads=2)
    debug = {}
    fill_frames(plates, masks, [], engine, Settings(threads=2), debug=debug, first=5)   # frames 5..10
    # Frames 6 and 7 take their fill from the previous frame's (the last source: nothing else shows
    # the hole, so the fused sources are the carried fill alone); 8 starts a window.
    inside = masks[0] > 0
    assert (debug["labels"][1][inside] == 0).all() and (debug["labels"][2][inside] == 0).all()
    assert (debug["labels"][3][inside] == -1).all()     # frame 8: the network, nothing carried
    # The chain restarts at the window boundary: the frames from 8 on are what a run from 8 gives.
    across = fill_frames(plates, masks, [], engine, Settings(threads=2), first=5)
    alone = fill_frames(plates[3:], masks[3:], [], engine, Settings(threads=2), first=8)
    for a, b in zip(across[3:], alone):
        assert np.array_equal(a, b)
    # Off: every frame is the network's.
    debug = {}
    fill_frames(plates, masks, [], engine, Settings(threads=2, temporal=False), debug=debug, first=5)
    assert all((labels[inside] == -1).all() for labels in debug["labels"].values())
