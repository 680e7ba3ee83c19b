"""The composite (core/composite.py): the blend weight, and the gradient-domain solve that makes
a fill meet the plate, and one source meet another, without an edge."""
import cv2
import numpy as np

from keyprop.core.composite import composite, composite_alpha, guidance, poisson_fill


def texture(h=90, w=120, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return (scale * (0.1 + 0.8 * (t - t.min()) / (t.max() - t.min()))).astype(np.float32)


def ellipse_hole(h=90, w=120):
    hole = np.zeros((h, w), np.uint8)
    cv2.ellipse(hole, (w // 2, h // 2), (30, 25), 0, 0, 360, 1, -1)
    return hole > 0


def test_an_offset_fill_comes_back_to_the_plate():
    """A fill right in texture but off in level (exposure drift) keeps its texture and meets the
    plate: the solve removes the constant offset."""
    plate = texture()
    hole = ellipse_hole()
    out = poisson_fill(plate + 0.15, plate, hole, steps=400)
    assert np.abs(out - plate)[hole].max() < 2e-3
    # Outside the hole: the plate, the same values.
    assert np.array_equal(out[~hole], plate[~hole])


def test_default_steps_remove_the_border_step():
    plate = texture()
    hole = ellipse_hole()
    start = plate + 0.15
    out = poisson_fill(start, plate, hole)
    ring = (cv2.dilate(hole.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~hole
    edge = hole & (cv2.dilate(ring.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert np.abs(out - plate)[edge].mean() < 0.01          # at the border: no step
    assert np.abs(out - plate)[hole].mean() < 0.05


def test_float_values_above_one_and_thin_holes():
    """Float-safe: scene values far above 1 are solved as they are (no clipping: the result
    scales with the input); a one-pixel-wide wire across the frame (solved over its own pixels)."""
    plate = texture()
    hole = ellipse_hole()
    small = poisson_fill(plate + 0.2, plate, hole)
    big = poisson_fill(40 * (plate + 0.2), 40 * plate, hole)
    assert big.max() > 30
    np.testing.assert_allclose(big, 40 * small, rtol=1e-3, atol=1e-3)
    wire = np.zeros(plate.shape[:2], np.uint8)
    cv2.line(wire, (0, 5), (119, 80), 1, 1)
    wire = wire > 0
    out = poisson_fill(plate + 0.2, plate, wire)
    assert np.abs(out - plate)[wire].max() < 1e-3


def test_a_hole_at_the_frame_border():
    plate = texture()
    hole = np.zeros(plate.shape[:2], bool)
    hole[:30, :40] = True
    out = poisson_fill(plate + 0.2, plate, hole, steps=400)
    assert np.abs(out - plate)[hole].max() < 2e-3


def test_two_sources_meet_without_a_scar():
    """Two sources of one texture at different levels, each taking half the hole: composed
    directly there is a step where they meet; from the mixed guidance there is none."""
    plate = texture()
    hole = ellipse_hole()
    a, b = plate + 0.1, plate - 0.1
    left = np.zeros(hole.shape, np.float32)
    left[:, :60] = 1
    hard = np.where(left[:, :, None] > 0, a, b)
    out = poisson_fill(hard, plate, hole, *guidance([a, b], [left, 1 - left]), steps=400)
    assert np.abs(out - plate)[hole].max() < 5e-3
    # Composed as is, the meeting line is a 0.2 step.
    assert np.abs(hard[:, 60] - hard[:, 59])[hole[:, 60]].mean() > 0.19


def test_composite_keeps_untouched_pixels_and_alpha():
    plate = np.random.default_rng(0).random((40, 50, 4)).astype(np.float32) * 3
    fill = np.zeros((20, 30, 3), np.float32)
    mask = np.zeros((20, 30), np.float32)
    mask[5:10, 5:15] = 1
    out = composite(plate, fill, composite_alpha(mask, 0, 0.0), (10, 10))
    changed = np.zeros((40, 50), bool)
    changed[15:20, 15:25] = True
    assert np.array_equal(out[~changed], plate[~changed])
    assert np.array_equal(out[:, :, 3], plate[:, :, 3])
    assert (out[changed][:, :3] == 0).all()
