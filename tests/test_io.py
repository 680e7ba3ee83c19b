"""core.io: real files written to tmp_path and read back."""

import os
import stat

import numpy as np
import pytest

from keyprop.core import io
from keyprop.core.errors import KeypropInputError

import cv2  # after keyprop.core.io, which enables OpenEXR

RNG = np.random.default_rng(1234)


def _random_file_samples(dtype, channels, shape=(19, 23)):
    """Random samples in a file's native type, including the extremes."""
    h, w = shape
    if dtype == "uint8":
        a = RNG.integers(0, 256, (h, w, channels), dtype=np.uint8)
        a.flat[:2] = [0, 255]
    elif dtype == "uint16":
        a = RNG.integers(0, 65536, (h, w, channels), dtype=np.uint16)
        a.flat[:2] = [0, 65535]
    elif dtype == "float16":
        a = (RNG.standard_normal((h, w, channels)) * 100).astype(np.float16)
        a.flat[:3] = [65504.0, -0.0, 6e-8]  # half max, signed zero, a subnormal
        a = a.astype(np.float32)
    else:
        a = (RNG.standard_normal((h, w, channels)) * 1e3).astype(np.float32)
        a.flat[:3] = [3e38, -1e-40, 1.0000001]
    return a


def _write_with_cv2(path, samples, params=()):
    """Make a 'foreign' input file with OpenCV directly (RGB(A) -> BGR(A))."""
    if samples.shape[2] == 1:
        bgr = samples[:, :, 0]
    elif samples.shape[2] == 3:
        bgr = samples[:, :, ::-1]
    else:
        bgr = samples[:, :, [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr), list(params))


def _read_with_cv2(path):
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a.ndim == 2:
        return a[:, :, None]
    return a[:, :, ::-1] if a.shape[2] == 3 else a[:, :, [2, 1, 0, 3]]


CASES = [
    ("png", "uint8", []),
    ("png", "uint16", []),
    ("tif", "uint8", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    ("tif", "uint16", [cv2.IMWRITE_TIFF_COMPRESSION, 5]),
    ("tif", "float32", [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    ("exr", "float16", [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF]),
    ("exr", "float32", [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT,
                        cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_PIZ]),
]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("ext,dtype,params", CASES, ids=[f"{e}-{d}" for e, d, _ in CASES])
def test_round_trip_is_bit_exact(tmp_path, ext, dtype, params, channels):
    samples = _random_file_samples(dtype, channels)
    src = tmp_path / f"plate.0001.{ext}"
    _write_with_cv2(src, samples, params)

    image = io.read_image(src)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == (19, 23, channels)
    assert image.format.dtype == dtype
    assert image.format.channels == channels
    if dtype in ("uint8", "uint16"):
        assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0

    out = tmp_path / f"out.0001.{ext}"
    io.write_image(out, image.pixels, like=image.format)
    back = _read_with_cv2(out)
    expected_dtype = np.float32 if dtype == "float16" else np.dtype(dtype)
    assert back.dtype == expected_dtype
    np.testing.assert_array_equal(back, samples.astype(expected_dtype))
    assert io.read_image(out).format == image.format


def test_channel_order_is_rgb(tmp_path):
    path = tmp_path / "red.png"
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[:, :, 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(path), bgr)
    pixels = io.read_image(path).pixels
    np.testing.assert_array_equal(pixels[0, 0], [1.0, 0.0, 0.0])


def test_exr_half_stays_half_and_keeps_lossless_compression(tmp_path):
    src = tmp_path / "a.exr"
    _write_with_cv2(src, _random_file_samples("float16", 3),
                    [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF,
                     cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_PIZ])
    fmt = io.read_image(src).format
    assert (fmt.dtype, fmt.exr_compression) == ("float16", cv2.IMWRITE_EXR_COMPRESSION_PIZ)
    # A lossy source codec (PXR24) is not reused: rewriting must not change pixels.
    lossy = io.ImageFormat(".exr", "float32", 3, cv2.IMWRITE_EXR_COMPRESSION_PXR24)
    written = io.write_image(tmp_path / "b.exr", np.ones((4, 4, 3), np.float32), like=lossy)
    assert written.exr_compression == cv2.IMWRITE_EXR_COMPRESSION_ZIP


def test_integer_scaling_is_exact_for_every_code_value():
    for dtype, top in (("uint8", 255), ("uint16", 65535)):
        codes = np.arange(top + 1, dtype=np.dtype(dtype)).reshape(1, -1, 1)
        pixels = codes.astype(np.float32) / np.float32(top)
        back = io._to_file_samples(pixels, dtype, "mem")
        np.testing.assert_array_equal(back[0], codes[0, :, 0])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("shape", [(1000, 700, 3), (61, 2200, 4), (5, 3, 1)])
def test_integer_samples_in_bands_match_the_whole_frame_formula(dtype, shape):
    """_to_file_samples converts in bands of rows: the same samples as the formula on the
    whole array in float64 (out of range clipped, halfway values rounded to even), every row
    written (bands that do not divide the height, rows wider than a band)."""
    rng = np.random.default_rng(3)
    pixels = rng.random(shape, dtype=np.float32) * np.float32(1.4) - np.float32(0.2)
    scale = io._INT_MAX[dtype]
    pixels.flat[::89] = ((np.arange(pixels.size)[::89] % scale) + 0.5) / scale   # halfway codes
    want = np.rint(np.clip(pixels.astype(np.float64), 0.0, 1.0) * scale).astype(dtype)
    if shape[2] == 1:
        want = want[:, :, 0]
    else:
        want = cv2.cvtColor(want, cv2.COLOR_RGB2BGR if shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    got = io._to_file_samples(pixels, dtype, "out.png")
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, want)


def test_jpeg_reads_and_offers_lossless_output(tmp_path):
    src = tmp_path / "plate.jpg"
    _write_with_cv2(src, _random_file_samples("uint8", 3))
    image = io.read_image(src)
    assert image.format.extension == ".jpg" and not image.format.is_lossless
    fmt = io.lossless_format(image.format)
    assert (fmt.extension, fmt.dtype, fmt.channels) == (".png", "uint8", 3)
    out = tmp_path / "out.png"
    io.write_image(out, image.pixels, like=fmt)
    # Lossless from the decoded JPEG onwards.
    np.testing.assert_array_equal(io.read_image(out).pixels, image.pixels)
    with pytest.raises(KeypropInputError, match="alpha"):
        io.write_image(tmp_path / "x.jpg", np.zeros((4, 4, 4), np.float32))


def test_write_into_other_container_keeps_precision(tmp_path):
    fmt = io.write_image(tmp_path / "a.png", np.full((3, 3, 3), 0.5, np.float32),
                         like=io.ImageFormat(".exr", "float32", 3, 3))
    assert fmt.dtype == "uint16"
    pixels = np.linspace(-1, 2, 27, dtype=np.float32).reshape(3, 3, 3)
    fmt = io.write_image(tmp_path / "b.png", pixels, like=io.ImageFormat(".png", "uint8", 3))
    back = io.read_image(tmp_path / "b.png").pixels
    np.testing.assert_array_equal(back, np.round(np.clip(pixels, 0, 1) * 255) / 255)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.0001.exr"
    io.write_image(path, np.zeros((8, 8, 3), np.float32))
    io.write_image(path, np.ones((8, 8, 3), np.float32))  # overwrite in place
    assert os.listdir(tmp_path) == ["out.0001.exr"]
    np.testing.assert_array_equal(io.read_image(path).pixels, 1.0)


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.0001.exr"
    with pytest.raises(KeypropInputError, match=r"nope\.0001\.exr: file not found"):
        io.read_image(missing)

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(KeypropInputError, match="corrupt.png: truncated or corrupt PNG"):
        io.read_image(corrupt)

    truncated = tmp_path / "truncated.exr"
    io.write_image(truncated, RNG.random((64, 64, 3)).astype(np.float32))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(KeypropInputError, match="truncated.exr"):
        io.read_image(truncated)

    with pytest.raises(KeypropInputError, match=r"unsupported image format '\.gif'"):
        io.read_image(tmp_path / "a.gif")

    with pytest.raises(KeypropInputError, match="output directory does not exist"):
        io.write_image(tmp_path / "no_dir" / "a.png", np.zeros((2, 2), np.float32))

    with pytest.raises(KeypropInputError, match="NaN"):
        io.write_image(tmp_path / "nan.exr", np.full((2, 2, 3), np.nan, np.float32))


def test_bad_files_raise_one_error_and_no_library_chatter(tmp_path, capfd):
    """libpng and OpenCV print their own line for a broken file; keyprop's error is the only one."""
    png = tmp_path / "plate.png"
    io.write_image(png, RNG.random((64, 64, 3)).astype(np.float32), like=io.ImageFormat(".png", "uint8", 3))
    whole = png.read_bytes()
    exr = tmp_path / "plate.exr"
    io.write_image(exr, RNG.random((64, 64, 3)).astype(np.float32))
    cuts = [("png", whole[:len(whole) // 2]), ("png", whole[:3000]), ("png", whole[:-12]),  # IEND gone
            ("exr", exr.read_bytes()[:len(exr.read_bytes()) // 2])]
    capfd.readouterr()
    for i, (ext, data) in enumerate(cuts):
        broken = tmp_path / f"broken{i}.{ext}"
        broken.write_bytes(data)
        with pytest.raises(KeypropInputError, match=f"broken{i}.{ext}: "):
            io.read_image(broken)
        out, err = capfd.readouterr()
        assert out == "" and err == "", (i, err)
    assert io.read_image(png).pixels.shape == (64, 64, 3)  # a whole PNG still reads


def test_nan_in_exr_is_refused_with_location(tmp_path):
    samples = np.zeros((6, 7, 3), np.float32)
    samples[2, 5, 1] = np.inf
    samples[4, 1, 0] = np.nan
    path = tmp_path / "bad.exr"
    _write_with_cv2(path, samples)
    with pytest.raises(KeypropInputError, match=r"bad\.exr: 2 NaN/inf .* x=5 y=2 channel 1"):
        io.read_image(path)


def test_unwritable_directory_message(tmp_path, monkeypatch):
    # Simulated, because tests often run as root, for whom chmod does not lock.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io, "open", refuse, raising=False)
    with pytest.raises(KeypropInputError, match="output directory is not writable"):
        io.write_image(tmp_path / "a.png", np.zeros((2, 2), np.float32))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions and a non-root user")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(KeypropInputError, match="not writable"):
            io.write_image(locked / "a.png", np.zeros((2, 2), np.float32))
    finally:
        locked.chmod(stat.S_IRWXU)


def test_read_mask_channel_rules(tmp_path):
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)

    io.write_image(tmp_path / "gray.exr", ramp * 2)  # float matte above 1 is clipped
    np.testing.assert_allclose(io.read_mask(tmp_path / "gray.exr"), np.clip(ramp * 2, 0, 1))

    rgb = np.dstack([ramp, ramp, ramp])
    io.write_image(tmp_path / "rgb.tif", rgb, like=io.ImageFormat(".tif", "float32", 3))
    np.testing.assert_allclose(io.read_mask(tmp_path / "rgb.tif"), ramp, atol=1e-6)

    rgba = np.dstack([np.zeros_like(ramp)] * 3 + [ramp])
    io.write_image(tmp_path / "alpha.exr", rgba)
    np.testing.assert_allclose(io.read_mask(tmp_path / "alpha.exr"), ramp)

    opaque = np.dstack([ramp, ramp, ramp, np.ones_like(ramp)])  # matte in RGB, alpha flat
    io.write_image(tmp_path / "opaque.exr", opaque)
    np.testing.assert_allclose(io.read_mask(tmp_path / "opaque.exr"), ramp, atol=1e-6)
    assert io.read_mask(tmp_path / "opaque.exr").dtype == np.float32


@pytest.mark.parametrize("ext", ["exr", "png", "tif", "jpg"])
def test_image_size_from_header(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    _write_with_cv2(path, _random_file_samples("uint8" if ext != "exr" else "float32", 3,
                                               shape=(37, 53)))
    assert io.image_size(path) == (37, 53)


@pytest.mark.parametrize("ext,dtype,channels", [(".png", "uint8", 3), (".png", "uint16", 4), (".png", "uint8", 1),
                                                (".tif", "float32", 3), (".exr", "float16", 4),
                                                (".exr", "float32", 3)])
def test_write_frame_replaces_only_its_region(tmp_path, ext, dtype, channels):
    rng = np.random.default_rng(0)
    pixels = rng.random((40, 50, channels)).astype(np.float32)
    src = tmp_path / f"plate{ext}"
    io.write_image(src, pixels, like=io.ImageFormat(ext, dtype, channels, 3 if ext == ".exr" else None))
    frame = io.read_frame(src)
    whole = io.read_image(src).pixels
    np.testing.assert_array_equal(frame.region(), whole)
    np.testing.assert_array_equal(frame.region(5, 25, 10, 30), whole[5:25, 10:30])
    patch = np.full((20, 20, channels), 0.25, np.float32)
    out = tmp_path / f"out{ext}"
    fmt = io.write_frame(out, frame, patch, (5, 10))
    assert fmt == frame.format
    back = io.read_image(out).pixels
    outside = np.ones(back.shape[:2], bool)
    outside[5:25, 10:30] = False
    np.testing.assert_array_equal(back[outside], whole[outside])
    # The same frame written the slow way (whole frame through float) is the same image.
    expected = whole.copy()
    expected[5:25, 10:30] = 0.25
    io.write_image(tmp_path / f"slow{ext}", expected, like=frame.format)
    np.testing.assert_array_equal(io.read_image(tmp_path / f"slow{ext}").pixels, back)


def test_write_frame_into_another_container_converts_the_whole_frame(tmp_path):
    io.write_image(tmp_path / "p.exr", np.full((8, 8, 3), 0.5, np.float32))
    frame = io.read_frame(tmp_path / "p.exr")
    fmt = io.write_frame(tmp_path / "o.png", frame, np.zeros((2, 2, 3), np.float32), (1, 1))
    assert fmt.extension == ".png"
    back = io.read_image(tmp_path / "o.png").pixels
    assert back[1, 1, 0] == 0 and back[5, 5, 0] > 0.4
