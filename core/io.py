"""Image files: read plates, masks and keyframes; write fills back in the plate's format.

Conventions
-----------
* Pixels are ``float32`` numpy arrays of shape ``(H, W, C)`` with ``C`` in {1, 3, 4},
  channels in **RGB(A)** order (OpenCV's BGR(A) is converted on the way in and out).
* Integer files map to [0, 1]: ``uint8 / 255``, ``uint16 / 65535``. Float files
  (EXR half/float, 32-bit float TIFF) keep their values (scene-linear, may exceed 1 or
  be negative).
* Every :func:`read_image` returns an :class:`ImageFormat` that records container,
  sample type, channel count and EXR compression, so :func:`write_image` with
  ``like=fmt`` writes the same kind of file back.
* **Bit-exact round trip.** The pipeline promises that pixels outside the mask equal
  the plate bit for bit. For every lossless format here (EXR half and float, PNG 8/16
  bit, TIFF 8/16 bit and 32-bit float, 1/3/4 channels) reading a file and writing the
  unchanged pixels back gives identical file sample values: integers survive
  ``v / 255 * 255`` after rounding (checked exhaustively in tests), half values are
  exactly representable in float32, float32 values are copied.
* **JPEG is lossy**: re-encoding changes decoded values, so bit-exactness is
  impossible. Reading JPEG works; for output prefer :func:`lossless_format` (8-bit
  PNG with the same channels). Writing JPEG is allowed but logged.
* Writes are atomic: the encoded bytes go to a hidden temporary file in the target
  directory (``.plate.0001.tmp-1a2b3c4d.exr``) which then replaces the target with
  ``os.replace``, so a farm job killed mid-write never leaves a half-written frame.

Files are read and written as bytes through ``cv2.imdecode``/``cv2.imencode`` rather
than ``cv2.imread``/``imwrite``: Python then does the file system work (non-ASCII
paths on Windows, clear OS errors, the atomic rename), and OpenCV only does codecs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import struct

# OpenCV disables its EXR codec unless asked, and reads the variable at import time.
os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"

import cv2  # noqa: E402  (must follow the environment variable above)
import numpy as np  # noqa: E402

# Bad input must give one line on stderr, keyprop's (it names the file and what is wrong).
# OpenCV logs its own line first for the same file (a WARN for a truncated PNG, an ERROR for
# a truncated EXR), so its log stays silent unless OPENCV_LOG_LEVEL asks for it (set it to
# WARNING to see what OpenCV says).
# OpenCV 4 has cv2.setLogLevel; OpenCV 5 keeps it in cv2.utils.logging only.
if "OPENCV_LOG_LEVEL" not in os.environ:
    _set_log_level = getattr(cv2, "setLogLevel", None) or \
        getattr(getattr(getattr(cv2, "utils", None), "logging", None), "setLogLevel", None)
    if _set_log_level is not None:
        _set_log_level(0)  # LOG_LEVEL_SILENT

from .errors import KeypropInputError  # noqa: E402

__all__ = [
    "ImageFormat",
    "Image",
    "read_image",
    "write_image",
    "read_mask",
    "Frame",
    "read_frame",
    "write_frame",
    "mask_from_pixels",
    "image_size",
    "lossless_format",
    "SUPPORTED_EXTENSIONS",
]

log = logging.getLogger(__name__)

# Canonical extension for each accepted spelling.
_EXTENSIONS = {
    ".exr": ".exr",
    ".png": ".png",
    ".tif": ".tif",
    ".tiff": ".tif",
    ".jpg": ".jpg",
    ".jpeg": ".jpg",
}
SUPPORTED_EXTENSIONS = tuple(sorted(_EXTENSIONS))

# Sample types each container can hold, best first (used when `like` asks for one
# the container cannot store, e.g. a float EXR plate written out as PNG).
_CONTAINER_DTYPES = {
    ".exr": ("float32", "float16"),
    ".tif": ("float32", "uint16", "uint8"),
    ".png": ("uint16", "uint8"),
    ".jpg": ("uint8",),
}
_INT_MAX = {"uint8": 255.0, "uint16": 65535.0}
_HALF_MAX = 65504.0

# OpenEXR compression ids (identical to cv2.IMWRITE_EXR_COMPRESSION_*).
_EXR_LOSSLESS = {0, 1, 2, 3, 4}  # NO, RLE, ZIPS, ZIP, PIZ
_EXR_ZIP = 3
_EXR_PIXEL_TYPES = {0: "uint32", 1: "float16", 2: "float32"}
# Channels OpenCV's EXR reader maps into its BGR(A)/gray result; others are dropped.
_EXR_READ_CHANNELS = {"R", "G", "B", "A", "Y"}
_EXR_MAGIC = b"\x76\x2f\x31\x01"

_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """What kind of file a frame came from, so it can be written back the same way.

    Attributes:
        extension: canonical lower-case extension: ``.exr``, ``.png``, ``.tif``, ``.jpg``.
        dtype: file sample type: ``uint8``, ``uint16``, ``float16`` (EXR half) or
            ``float32`` (EXR float, float TIFF).
        channels: 1 (gray / EXR ``Y``), 3 (RGB) or 4 (RGBA).
        exr_compression: OpenEXR compression id of the source (EXR only), else None.
    """

    extension: str
    dtype: str
    channels: int
    exr_compression: int | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float16", "float32")

    @property
    def is_lossless(self) -> bool:
        return self.extension != ".jpg"


@dataclasses.dataclass
class Image:
    """A decoded frame.

    Attributes:
        pixels: float32 ``(H, W, C)``, RGB(A) order; integer files scaled to [0, 1].
        format: how the file was stored (pass it to :func:`write_image` as ``like``).
        path: the file it was read from.
    """

    pixels: np.ndarray
    format: ImageFormat
    path: str

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.pixels.shape[0], self.pixels.shape[1]


def lossless_format(fmt: ImageFormat) -> ImageFormat:
    """The format to write a fill in when ``fmt`` is lossy: JPEG -> 8-bit PNG.

    Lossless formats are returned unchanged.
    """
    if fmt.is_lossless:
        return fmt
    return dataclasses.replace(fmt, extension=".png", dtype="uint8", exr_compression=None)


# --------------------------------------------------------------------------- reading


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise KeypropInputError(
            f"unsupported image format '{ext or '(no extension)'}' "
            f"(expected one of {', '.join(SUPPORTED_EXTENSIONS)})",
            path,
        )
    return _EXTENSIONS[ext]


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise KeypropInputError("file not found", path)
    if os.path.isdir(path):
        raise KeypropInputError("is a directory, expected an image file", path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KeypropInputError(f"cannot read file: {e.strerror or e}", path) from e


def _exr_header(data: bytes, path: str) -> dict:
    """Parse the attributes of a single-part scan-line EXR header that we need.

    Returns ``{"channels": {name: pixel type}, "compression": int,
    "dataWindow": (xmin, ymin, xmax, ymax), "displayWindow": (...)}``. OpenCV does
    not report half vs float or the compression, and both are needed to write the
    file back the same way.
    """
    if data[:4] != _EXR_MAGIC:
        raise KeypropInputError("not an OpenEXR file (bad magic number)", path)
    header: dict = {}
    pos = 8  # magic (4) + version and flags (4)
    try:
        while data[pos] != 0:
            end = data.index(b"\0", pos)
            name = data[pos:end].decode("latin-1")
            tend = data.index(b"\0", end + 1)
            (size,) = struct.unpack_from("<i", data, tend + 1)
            value = data[tend + 5 : tend + 5 + size]
            if len(value) != size:
                raise IndexError("attribute runs past end of file")
            pos = tend + 5 + size
            if name == "channels":
                header["channels"] = _exr_channels(value)
            elif name == "compression":
                header["compression"] = value[0]
            elif name in ("dataWindow", "displayWindow"):
                header[name] = struct.unpack("<4i", value)
    except (IndexError, ValueError, struct.error) as e:
        raise KeypropInputError(f"corrupt OpenEXR header ({e})", path) from e
    if "channels" not in header or "dataWindow" not in header:
        raise KeypropInputError("corrupt OpenEXR header (no channels or dataWindow)", path)
    return header


def _exr_channels(value: bytes) -> dict[str, str]:
    """Decode an EXR ``chlist`` attribute into ``{channel name: pixel type}``."""
    channels = {}
    pos = 0
    while value[pos] != 0:
        end = value.index(b"\0", pos)
        name = value[pos:end].decode("latin-1")
        (ptype,) = struct.unpack_from("<i", value, end + 1)
        channels[name] = _EXR_PIXEL_TYPES.get(ptype, "unknown")
        pos = end + 1 + 16  # pixel type, pLinear + 3 reserved, x and y sampling
    return channels


def _exr_format(header: dict, channels: int, path: str) -> ImageFormat:
    """Format record of an EXR from its parsed header."""
    read = {n: t for n, t in header["channels"].items() if n in _EXR_READ_CHANNELS}
    dropped = sorted(set(header["channels"]) - _EXR_READ_CHANNELS)
    if dropped:
        log.warning("%s: EXR channels %s are not read (only R, G, B, A, Y)", path, dropped)
    if header.get("displayWindow", header["dataWindow"]) != header["dataWindow"]:
        log.warning("%s: EXR dataWindow differs from displayWindow; using dataWindow", path)
    # Half only if every channel we read is half; otherwise float keeps all values.
    dtype = "float16" if read and all(t == "float16" for t in read.values()) else "float32"
    return ImageFormat(".exr", dtype, channels, header.get("compression", _EXR_ZIP))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_complete(data: bytes, path: str) -> None:
    """A PNG must reach its IEND chunk; checked here because libpng reports a truncated file
    on stderr itself (``libpng error: ...``, beyond OpenCV's log level) before the decode fails.
    """
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND" and pos <= len(data):
            return
    raise KeypropInputError("truncated or corrupt PNG (the file ends before its IEND chunk)", path)


def _decode(data: bytes, path: str) -> np.ndarray:
    if data[:len(_PNG_SIGNATURE)] == _PNG_SIGNATURE:
        _check_png_complete(data, path)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        array = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise KeypropInputError("cannot decode image (corrupt or truncated file)", path) from e
    if array is None:
        raise KeypropInputError("cannot decode image (corrupt or truncated file)", path)
    return array


def _check_finite(pixels: np.ndarray, path: str) -> None:
    bad = ~np.isfinite(pixels)
    if bad.any():
        y, x, c = np.argwhere(bad)[0]
        raise KeypropInputError(
            f"{int(bad.sum())} NaN/inf sample(s), first at x={x} y={y} channel {c}; "
            "expected finite values (fix the render or clamp it before keyprop)",
            path,
        )


def _to_rgb_order(array: np.ndarray) -> np.ndarray:
    """BGR(A) -> RGB(A), gray gets a channel axis. Returns ``(H, W, C)``."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


@dataclasses.dataclass
class Frame:
    """A decoded frame kept in its file's samples, converted to float only where asked.

    A plate's fill touches a small region; converting a whole 4K frame to float and back
    costs more than the fill. ``raw`` is what the codec gave (BGR(A) or gray, file sample
    type); :meth:`region` converts a box of it, :func:`write_frame` writes it back with a
    box replaced, so samples outside the box are the file's own bytes.
    """

    raw: np.ndarray
    format: ImageFormat
    path: str

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.raw.shape[0], self.raw.shape[1]

    def region(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """float32 ``(h, w, C)`` RGB(A) pixels of the box (integer files scaled to [0, 1])."""
        box = self.raw[y0:y1, x0:x1]
        array = _to_rgb_order(np.ascontiguousarray(box))
        if array.dtype.name in _INT_MAX:
            return array.astype(np.float32) / np.float32(_INT_MAX[array.dtype.name])
        return np.ascontiguousarray(array, dtype=np.float32)


def read_frame(path: str | os.PathLike) -> Frame:
    """Read one frame, keeping its file samples (see :class:`Frame`); checks as :func:`read_image`."""
    path = os.fspath(path)
    ext = _extension(path)
    data = _read_bytes(path)
    header = _exr_header(data, path) if ext == ".exr" else None
    array = _decode(data, path)
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in (1, 3, 4):
        raise KeypropInputError(f"{channels} channels, expected 1, 3 or 4", path)
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        dtype = array.dtype.name
    elif array.dtype == np.float32:
        dtype = "float32"
        _check_finite(array if array.ndim == 3 else array[:, :, None], path)
    else:
        raise KeypropInputError(
            f"unsupported sample type {array.dtype} "
            "(expected 8/16-bit integer, EXR half/float or 32-bit float TIFF)",
            path,
        )
    fmt = _exr_format(header, channels, path) if header is not None else ImageFormat(ext, dtype, channels)
    return Frame(raw=array, format=fmt, path=path)


def read_image(path: str | os.PathLike) -> Image:
    """Read one frame.

    Args:
        path: an ``.exr``, ``.png``, ``.tif``/``.tiff`` or ``.jpg``/``.jpeg`` file.

    Returns:
        :class:`Image` with ``pixels`` float32 ``(H, W, C)``, RGB(A), integer files
        scaled to [0, 1], and the :class:`ImageFormat` to write it back with.

    Raises:
        KeypropInputError: missing, unreadable or corrupt file, unsupported format
        or sample type, unsupported channel count, NaN/inf in a float file.
    """
    frame = read_frame(path)
    pixels = frame.region()
    log.debug("read %s: %s %s", frame.path, pixels.shape, frame.format)
    return Image(pixels=pixels, format=frame.format, path=frame.path)


def mask_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """float32 ``(H, W)`` mask from float ``(H, W, C)`` pixels (the rule of :func:`read_mask`)."""
    channels = pixels.shape[2]
    if channels == 1:
        mask = pixels[:, :, 0]
    elif channels == 4 and pixels[:, :, 3].min() != pixels[:, :, 3].max():
        mask = pixels[:, :, 3]
    else:
        rgb = pixels[:, :, :3]
        mask = rgb @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return np.clip(mask, 0.0, 1.0).astype(np.float32, copy=False)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask: float32 ``(H, W)`` in [0, 1], 1 (white) = region to fill.

    Which channel carries the mask:

    * 1 channel: that channel.
    * 3 channels: Rec.709 luminance of RGB.
    * 4 channels: alpha, unless alpha is constant over the whole frame (an RGBA
      export of a black/white matte with opaque alpha), in which case RGB luminance.

    Values outside [0, 1] (float mattes) are clipped.
    """
    frame = read_frame(path)
    if frame.raw.ndim == 2 and frame.raw.dtype.name in _INT_MAX:
        # A one-channel integer matte is in [0, 1] once scaled: no clip (nor its copy, at 4K).
        return frame.region()[:, :, 0]
    return mask_from_pixels(frame.region())


# ---------------------------------------------------------------------- size only


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file, from its header where cheap (EXR, PNG, JPEG, TIFF).

    Used to validate a shot without decoding every frame. Falls back to a full
    decode when the header is not understood.

    Raises:
        KeypropInputError: as :func:`read_image`.
    """
    path = os.fspath(path)
    ext = _extension(path)
    if not os.path.isfile(path):
        _read_bytes(path)  # raises the right error
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise KeypropInputError(f"cannot read file: {e.strerror or e}", path) from e
    size = None
    try:
        if ext == ".exr":
            xmin, ymin, xmax, ymax = _exr_header(head, path)["dataWindow"]
            size = (ymax - ymin + 1, xmax - xmin + 1)
        elif ext == ".png" and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            size = (h, w)
        elif ext == ".jpg":
            size = _jpeg_size(head)
        elif ext == ".tif":
            size = _tiff_size(path)
    except KeypropInputError:
        size = None  # header may extend past 64 KiB: let the full read decide
    except (IndexError, ValueError, struct.error):
        size = None
    if size is None:
        size = read_image(path).size
    return size


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Height and width from the first SOFn marker of a JPEG, or None."""
    if head[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", head, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack_from(">HH", head, pos + 5)
            return (h, w)
        pos += 2 + length
    return None


def _tiff_size(path: str) -> tuple[int, int] | None:
    """Height and width from the first IFD of a (classic, not Big) TIFF, or None."""
    with open(path, "rb") as f:
        order = f.read(2)
        e = {b"II": "<", b"MM": ">"}.get(order)
        if e is None:
            return None
        magic, ifd = struct.unpack(e + "HI", f.read(6))
        if magic != 42:
            return None
        f.seek(ifd)
        (count,) = struct.unpack(e + "H", f.read(2))
        tags = {}
        for _ in range(count):
            tag, typ, _n, raw = struct.unpack(e + "HHI4s", f.read(12))
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
                fmt = e + ("H" if typ == 3 else "I")
                tags[tag] = struct.unpack_from(fmt, raw)[0]
        if 256 in tags and 257 in tags:
            return (tags[257], tags[256])
    return None


# --------------------------------------------------------------------------- writing


def _target_dtype(ext: str, like: ImageFormat | None, path: str) -> str:
    """File sample type for ``ext``: ``like.dtype`` if the container holds it."""
    allowed = _CONTAINER_DTYPES[ext]
    if like is None:
        return allowed[0]
    if like.dtype in allowed:
        return like.dtype
    # Keep as much precision as the container allows.
    dtype = allowed[0]
    log.info("%s: %s cannot store %s samples, writing %s", path, ext, like.dtype, dtype)
    return dtype


def _encode_params(ext: str, dtype: str, like: ImageFormat | None) -> list[int]:
    if ext == ".exr":
        exr_type = cv2.IMWRITE_EXR_TYPE_HALF if dtype == "float16" else cv2.IMWRITE_EXR_TYPE_FLOAT
        compression = like.exr_compression if like is not None else None
        # Lossy EXR codecs (PXR24, B44, DWA) are not idempotent: rewriting would
        # change plate pixels, so keep the source codec only when it is lossless.
        if compression not in _EXR_LOSSLESS:
            compression = _EXR_ZIP
        return [cv2.IMWRITE_EXR_TYPE, exr_type, cv2.IMWRITE_EXR_COMPRESSION, compression]
    if ext == ".tif":
        # Explicit LZW: OpenCV's default for 3-channel float TIFF is SGILOG (LogLuv),
        # which is lossy (about 1% error).
        return [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_LZW]
    if ext == ".jpg":
        return [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]
    return []


# Samples per band of rows that _to_file_samples converts at a time (1 MB in float64).
_CONVERT_BAND = 1 << 17


def _to_file_samples(pixels: np.ndarray, dtype: str, path: str) -> np.ndarray:
    """float32 RGB(A) ``(H, W, C)`` -> array OpenCV encodes: BGR(A), file sample type."""
    if dtype in _INT_MAX:
        scale = _INT_MAX[dtype]
        # float64 so that v/scale*scale lands within far less than 0.5 of v.
        # In bands of rows, in place: a whole 1080p frame in float64 is 50 MB an array, and
        # on a writer thread beside the fill fresh arrays that size cost more than the
        # arithmetic (0.03-0.3 s a frame, against 0.1 s for the PNG encode).
        samples = np.empty(pixels.shape, np.dtype(dtype))
        band = max(1, _CONVERT_BAND // max(1, pixels.shape[1] * pixels.shape[2]))
        for y in range(0, pixels.shape[0], band):
            rows = pixels[y:y + band].astype(np.float64)
            np.clip(rows, 0.0, 1.0, out=rows)
            rows *= scale
            samples[y:y + band] = np.rint(rows, out=rows)
    else:
        samples = pixels.astype(np.float32, copy=False)
        if dtype == "float16":
            peak = float(np.abs(samples).max()) if samples.size else 0.0
            if peak > _HALF_MAX:
                log.warning("%s: values up to %g clipped to the half-float maximum %g",
                            path, peak, _HALF_MAX)
                samples = np.clip(samples, -_HALF_MAX, _HALF_MAX)
    channels = samples.shape[2]
    if channels == 1:
        return np.ascontiguousarray(samples[:, :, 0])
    if channels == 3:
        return cv2.cvtColor(samples, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(samples, cv2.COLOR_RGBA2BGRA)


def _check_pixels(pixels: np.ndarray, ext: str, path: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise KeypropInputError(
            f"cannot write pixels of shape {pixels.shape}, expected (H, W) or (H, W, C) "
            "with C in 1, 3, 4", path)
    if ext == ".jpg" and pixels.shape[2] == 4:
        raise KeypropInputError("JPEG cannot store alpha; write PNG, TIFF or EXR", path)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise KeypropInputError(f"expected float pixels, got {pixels.dtype}", path)
    if not np.isfinite(pixels).all():
        n = int((~np.isfinite(pixels)).sum())
        raise KeypropInputError(f"refusing to write {n} NaN/inf sample(s)", path)
    return pixels


def write_image(path: str | os.PathLike, pixels: np.ndarray,
                like: ImageFormat | None = None) -> ImageFormat:
    """Write a frame atomically, in the format of ``like`` where the container allows.

    Args:
        path: output file; its extension picks the container.
        pixels: float ``(H, W)`` or ``(H, W, C)``, C in {1, 3, 4}, RGB(A), values in
            [0, 1] for integer files (clipped), any finite value for float files.
            The channel count written is the channel count given.
        like: format to reproduce (usually ``read_image(plate).format``): sample type
            and EXR compression. Without it: float32 EXR/TIFF, 16-bit PNG, 8-bit JPEG.
            If the container cannot store ``like.dtype`` the closest is used.

    Returns:
        The :class:`ImageFormat` actually written.

    Raises:
        KeypropInputError: unsupported extension, bad pixel shape, NaN/inf pixels,
        missing or unwritable output directory, encoder failure.
    """
    path = os.fspath(path)
    ext = _extension(path)
    pixels = _check_pixels(pixels, ext, path)
    dtype = _target_dtype(ext, like, path)
    if ext == ".jpg":
        log.info("%s: JPEG is lossy; pixels outside the mask will not match the plate "
                 "exactly (write PNG/TIFF/EXR for that)", path)
    params = _encode_params(ext, dtype, like)
    samples = _to_file_samples(pixels, dtype, path)
    _encode_atomic(path, ext, samples, params)
    fmt = ImageFormat(ext, dtype, pixels.shape[2],
                      params[3] if ext == ".exr" else None)
    log.debug("wrote %s: %s %s", path, pixels.shape, fmt)
    return fmt


def write_frame(path: str | os.PathLike, frame: Frame, pixels: np.ndarray | None = None,
                box: tuple[int, int] = (0, 0)) -> ImageFormat:
    """Write ``frame`` with the region at ``box`` (y0, x0) replaced by float ``pixels``.

    Samples outside the region are the frame's file samples, untouched (no float round
    trip). Same container and sample type as the frame's file; other outputs go through
    :func:`write_image` with the whole frame converted. Atomic like :func:`write_image`.
    """
    path = os.fspath(path)
    ext = _extension(path)
    fmt = frame.format
    if ext != fmt.extension or _target_dtype(ext, fmt, path) != fmt.dtype:
        full = frame.region()
        if pixels is not None:
            y0, x0 = box
            full[y0:y0 + pixels.shape[0], x0:x0 + pixels.shape[1]] = pixels
        return write_image(path, full, like=fmt)
    samples = frame.raw
    if pixels is not None:
        pixels = _check_pixels(pixels, ext, path)
        if pixels.shape[2] != fmt.channels:
            raise KeypropInputError(f"region has {pixels.shape[2]} channels, the frame {fmt.channels}", path)
        y0, x0 = box
        patch = _to_file_samples(pixels, fmt.dtype, path)
        if fmt.dtype == "float16":
            patch = patch.astype(np.float32)    # OpenCV holds EXR half as float32 samples
        samples = samples.copy()
        samples[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
    params = _encode_params(ext, fmt.dtype, fmt)
    _encode_atomic(path, ext, samples, params)
    return fmt


def _encode_atomic(path: str, ext: str, samples: np.ndarray, params: list[int]) -> None:
    """Encode file samples with OpenCV's ``ext`` codec and write them atomically."""
    try:
        ok, encoded = cv2.imencode(ext, samples, params)
    except cv2.error as e:
        raise KeypropInputError(f"image encoder failed ({e.msg.strip()})", path) from e
    if not ok:
        raise KeypropInputError("image encoder failed", path)
    _write_atomic(path, encoded.tobytes())


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it over.

    The temporary name keeps the real extension last (``.name.tmp-XXXXXXXX.exr``) so
    tools that sniff extensions still recognise it, and starts with a dot so frame
    scanners and file browsers skip it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise KeypropInputError("output directory does not exist", directory)
    stem, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(directory, f".{stem}.tmp-{secrets.token_hex(4)}{ext}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, PermissionError):
            raise KeypropInputError("output directory is not writable", directory) from e
        raise KeypropInputError(f"cannot write file: {e.strerror or e}", path) from e
