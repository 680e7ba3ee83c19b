"""Transfer functions between scene-linear plates and the display-referred [0, 1] the
network works in.

The model was trained on display-referred video (sRGB-encoded, [0, 1]). Plates in
EXR or float TIFF are scene-linear and go above 1 (highlights, practicals, sky), so
they are encoded with the sRGB OETF plus a highlight roll-off that squeezes
``[knee, inf)`` into ``[knee_display, 1)``; the network's fill is decoded with the
exact inverse. Only the fill passes through the inverse: pixels outside the mask are
copied from the plate and never touch these functions.

The curve, for linear ``x >= 0`` (constants below, ``K_D = 0.8``)::

    y = 12.92 x                                  x <= 0.0031308
    y = 1.055 x^(1/2.4) - 0.055                  0.0031308 < x < K_L
    y = K_D + r u / (1 + u),  u = d (x - K_L) / r   x >= K_L

with ``K_L = ((K_D + 0.055) / 1.055)^2.4 ~= 0.604`` the linear knee (sRGB of K_L is
K_D), ``r = 1 - K_D`` the headroom, and ``d = (1.055 / 2.4) K_L^(1/2.4 - 1)`` the
slope of sRGB at the knee, so the curve is continuous with a continuous first
derivative (C1) and strictly increasing. ``y -> 1`` as ``x -> inf``: linear 1.0
encodes to ~0.908, 10 to ~0.993, 1000 to ~0.99993. The rational tail
``u / (1 + u)`` decays like ``1/x``, far slower than an exponential, so float32
display values still resolve bright highlights (roughly 1e-4 relative at 1000).

Inverse for ``y >= K_D``: ``v = (y - K_D) / r``, ``u = v / (1 - v)``,
``x = K_L + u r / d``. The two functions are exact inverses (to float rounding) for
``|x| <= LINEAR_MAX`` (65504, the half-float maximum); ``to_linear`` saturates there,
so a display value of exactly 1.0 (a clipped network output) decodes to 65504, not
infinity.

Negative values (noise below black in scene-linear plates, out-of-gamut colours) use
the odd extension ``f(-x) = -f(x)``: still exactly invertible, continuous through 0
(the sRGB toe is linear there), and bounded in (-1, 1) so a stray large negative
does not hand the network a huge input.

Integer files (8/16-bit PNG, TIFF, JPEG) are normally already display-encoded and
go to the network unchanged; see :func:`is_linear_by_default`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "to_display",
    "to_linear",
    "is_linear_by_default",
    "KNEE_DISPLAY",
    "KNEE_LINEAR",
    "LINEAR_MAX",
]

# Display value where the roll-off starts. Below it the curve is plain sRGB, so
# ordinary (non-highlight) image content reaches the network as it was trained on.
KNEE_DISPLAY = 0.8
_A = 0.055
_GAMMA = 2.4
_TOE_LINEAR = 0.0031308
_TOE_SLOPE = 12.92

KNEE_LINEAR = ((KNEE_DISPLAY + _A) / (1 + _A)) ** _GAMMA
_HEADROOM = 1.0 - KNEE_DISPLAY
_KNEE_SLOPE = (1 + _A) / _GAMMA * KNEE_LINEAR ** (1 / _GAMMA - 1)
LINEAR_MAX = 65504.0


def _out_dtype(x: np.ndarray):
    return np.float64 if x.dtype == np.float64 else np.float32


def _encode_positive(x: np.ndarray) -> np.ndarray:
    """Forward curve for ``x >= 0`` (float64 in, float64 out)."""
    y = np.empty_like(x)
    toe = x <= _TOE_LINEAR
    knee = x >= KNEE_LINEAR
    mid = ~(toe | knee)
    y[toe] = _TOE_SLOPE * x[toe]
    y[mid] = (1 + _A) * np.power(x[mid], 1 / _GAMMA) - _A
    u = _KNEE_SLOPE * (x[knee] - KNEE_LINEAR) / _HEADROOM
    y[knee] = KNEE_DISPLAY + _HEADROOM * u / (1 + u)
    return y


def _decode_positive(y: np.ndarray) -> np.ndarray:
    """Inverse curve for ``y >= 0`` (float64 in, float64 out), saturating at LINEAR_MAX."""
    x = np.empty_like(y)
    toe = y <= _TOE_SLOPE * _TOE_LINEAR
    knee = y >= KNEE_DISPLAY
    mid = ~(toe | knee)
    x[toe] = y[toe] / _TOE_SLOPE
    x[mid] = np.power((y[mid] + _A) / (1 + _A), _GAMMA)
    v = np.minimum((y[knee] - KNEE_DISPLAY) / _HEADROOM, _V_MAX)
    x[knee] = KNEE_LINEAR + v / (1 - v) * _HEADROOM / _KNEE_SLOPE
    return x


# Roll-off parameter v at LINEAR_MAX: decoding clamps to it so 1.0 stays finite.
_U_MAX = _KNEE_SLOPE * (LINEAR_MAX - KNEE_LINEAR) / _HEADROOM
_V_MAX = _U_MAX / (1 + _U_MAX)


def to_display(linear: np.ndarray) -> np.ndarray:
    """Scene-linear -> display-referred: sRGB OETF with highlight roll-off.

    Args:
        linear: any shape, any real values (alpha should not be passed through this).

    Returns:
        Same shape, values in (-1, 1); float64 if the input is float64, else float32.
        Exactly plain sRGB below linear ``KNEE_LINEAR`` (~0.604).
    """
    x = np.asarray(linear, dtype=np.float64)
    y = np.sign(x) * _encode_positive(np.abs(x))
    return y.astype(_out_dtype(np.asarray(linear)), copy=False)


def to_linear(display: np.ndarray) -> np.ndarray:
    """Display-referred -> scene-linear; the exact inverse of :func:`to_display`.

    Args:
        display: any shape. Values with ``|y| >= to_display(LINEAR_MAX)`` (including
            1.0 and above) saturate to ``+-LINEAR_MAX``.

    Returns:
        Same shape; float64 if the input is float64, else float32.
    """
    y = np.asarray(display, dtype=np.float64)
    x = np.sign(y) * _decode_positive(np.abs(y))
    return x.astype(_out_dtype(np.asarray(display)), copy=False)


def is_linear_by_default(fmt) -> bool:
    """Whether a file of this format holds scene-linear values unless told otherwise.

    Float files (EXR half/float, 32-bit float TIFF) are scene-linear by VFX
    convention; integer files (8/16-bit PNG and TIFF, JPEG) are display-encoded.

    Args:
        fmt: a :class:`keyprop.core.io.ImageFormat` (anything with ``dtype``).
    """
    return fmt.dtype in ("float16", "float32")
