"""The network's pass over the part of the working area a fill needs (core.filler.network_box)."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from keyprop.core.api import Settings, fill_frames
from keyprop.core.filler import NETWORK_BOX_SHARE, network_box
from keyprop.core.runtime import create_engine

MODEL = "preset:test"


@pytest.mark.parametrize("within", [(slice(100, 140), slice(200, 230)), (slice(0, 10), slice(0, 10)),
                                    (slice(350, 360), slice(630, 640)), (slice(3, 357), slice(290, 301))])
def test_the_box_holds_the_part_in_whole_strides_inside_the_area(within):
    engine = SimpleNamespace(stride=8, min_side=72)
    box = network_box(within, (360, 640), engine)
    for part, got, n in zip(within, box, (360, 640)):
        assert got.start <= part.start and got.stop >= part.stop
        assert 0 <= got.start and got.stop <= n
        size = got.stop - got.start
        assert size % 8 == 0 and size >= 72


def test_no_box_for_fixed_size_engines_or_most_of_the_area():
    within = (slice(100, 140), slice(200, 230))
    assert network_box(within, (360, 640), SimpleNamespace(stride=8)) is None      # no min_side: ONNX
    big = (slice(0, 360), slice(0, int(640 * NETWORK_BOX_SHARE) + 8))
    assert network_box(big, (360, 640), SimpleNamespace(stride=8, min_side=72)) is None


class Spy:
    """An engine that records the sizes its network passes run at."""

    def __init__(self, engine, fixed_size=False):
        self._engine, self.sizes = engine, []
        self.stride = engine.stride
        if not fixed_size:
            self.min_side = engine.min_side

    def encode_keyframe(self, frame):
        return self._engine.encode_keyframe(frame)

    def fill(self, target, *args):
        self.sizes.append(target.shape[1:])
        return self._engine.fill(target, *args)

    def __getattr__(self, name):
        if name == "min_side":
            raise AttributeError(name)
        return getattr(self._engine, name)


def test_a_small_hole_no_source_shows_runs_the_network_around_it_only():
    """A static shot with a blob on the left that moves a little: the next frame shows part of
    the first frame's hole, and the network fills the rest; the last frame also hides a blob on
    the right (the ROI spans both). Over the fusion box (the blob and FUSION_MARGIN around it),
    not the whole working area; an engine of fixed sizes still gets the whole area. The fills
    agree where they are composited."""
    rng = np.random.default_rng(3)
    clean = cv2.GaussianBlur(rng.random((256, 384, 3)).astype(np.float32), (0, 0), 2.0)
    masks = [np.zeros((256, 384), np.float32) for _ in range(3)]
    for m, x in zip(masks, (40, 52, 40)):
        m[100:160, x:x + 60] = 1.0
    masks[2][100:160, 300:360] = 1.0
    frames = [np.where(m[:, :, None] > 0, np.float32(0.1), clean) for m in masks]
    settings = Settings(model=MODEL, threads=1, work_res=384)
    base = create_engine("torch", model=MODEL, threads=1)
    cropped, whole = Spy(base), Spy(base, fixed_size=True)
    out_crop = fill_frames(frames, masks, [], cropped, settings)
    out_whole = fill_frames(frames, masks, [], whole, settings)
    area = whole.sizes[0]
    assert all(size == area for size in whole.sizes)
    assert any(h * w < area[0] * area[1] for h, w in cropped.sizes)
    for a, b, m in zip(out_crop, out_whole, masks):
        inside = m > 0
        assert np.array_equal(a[~inside], b[~inside])          # the plate outside the mask
        assert np.abs(a - b)[inside].mean() < 0.1                # the same kind of fill
