"""core.color: the display transform and its inverse."""

import numpy as np
import pytest

from keyprop.core import color
from keyprop.core.io import ImageFormat


def _srgb(x):
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0), 1 / 2.4) - 0.055)


def test_round_trip_0_to_1000():
    x = np.concatenate([np.linspace(0, 1, 2001), np.logspace(-6, 3, 2001)])
    back = color.to_linear(color.to_display(x))
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-12)


def test_round_trip_negatives_is_odd_symmetric():
    x = -np.logspace(-6, 3, 500)
    y = color.to_display(x)
    np.testing.assert_allclose(y, -color.to_display(-x))
    assert (y > -1).all()
    np.testing.assert_allclose(color.to_linear(y), x, rtol=1e-5)


def test_inverse_of_display_values():
    y = np.linspace(-0.9999, 0.9999, 4001)
    np.testing.assert_allclose(color.to_display(color.to_linear(y)), y, rtol=1e-9, atol=1e-12)


def test_plain_srgb_below_the_knee():
    x = np.linspace(0, color.KNEE_LINEAR, 1000)
    np.testing.assert_allclose(color.to_display(x), _srgb(x), atol=1e-12)
    assert color.to_display(np.float64(0.18)) == pytest.approx(0.4613, abs=1e-4)
    assert color.to_display(np.float64(color.KNEE_LINEAR)) == pytest.approx(color.KNEE_DISPLAY)


def test_rolloff_is_monotonic_bounded_and_smooth():
    x = np.unique(np.concatenate([np.linspace(0, 2, 20001), np.logspace(0.3, 4.8, 2000)]))
    y = color.to_display(x)
    assert (np.diff(y) > 0).all()
    assert y.max() < 1.0
    # C1 at the knee: slopes just below and above agree.
    k, h = color.KNEE_LINEAR, 1e-7
    below = (color.to_display(np.float64(k)) - color.to_display(np.float64(k - h))) / h
    above = (color.to_display(np.float64(k + h)) - color.to_display(np.float64(k))) / h
    assert above == pytest.approx(below, rel=1e-4)


def test_saturation_keeps_decoding_finite():
    assert color.to_linear(np.float64(1.0)) == pytest.approx(color.LINEAR_MAX)
    assert color.to_linear(np.float64(-5.0)) == pytest.approx(-color.LINEAR_MAX)
    assert np.isfinite(color.to_linear(np.array([1.0, 2.0], np.float32))).all()


def test_dtypes_and_shapes():
    img = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32) * 4
    y = color.to_display(img)
    assert y.dtype == np.float32 and y.shape == img.shape
    assert color.to_linear(y).dtype == np.float32
    np.testing.assert_allclose(color.to_linear(y), img, rtol=2e-5)
    assert color.to_display(np.zeros(3, np.float64)).dtype == np.float64


@pytest.mark.parametrize("dtype,linear", [("float16", True), ("float32", True),
                                          ("uint8", False), ("uint16", False)])
def test_is_linear_by_default(dtype, linear):
    ext = ".exr" if dtype.startswith("float") else ".png"
    assert color.is_linear_by_default(ImageFormat(ext, dtype, 3)) is linear
