"""core.shot: patterns, scanning, validation and the keyframe plan."""

import os

import numpy as np
import pytest

from keyprop.core import io
from keyprop.core.errors import KeypropInputError
from keyprop.core.shot import Shot, expand, plan_keyframes, scan


@pytest.mark.parametrize("pattern,frame,expected", [
    ("a/plate.%04d.exr", 7, "a/plate.0007.exr"),
    ("plate.####.exr", 7, "plate.0007.exr"),
    ("plate.##.exr", 1234, "plate.1234.exr"),
    ("plate.%d.png", 7, "plate.7.png"),
    ("plate_%06d.tif", -3, "plate_-00003.tif"),
])
def test_expand(pattern, frame, expected):
    assert expand(pattern, frame) == expected


@pytest.mark.parametrize("bad", ["plate.exr", "plate.%04d.%04d.exr", "p%04d/plate.exr",
                                 "plate.%4d.exr"])
def test_bad_patterns(bad):
    with pytest.raises(KeypropInputError):
        expand(bad, 1)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_scan_matches_padding_exactly(tmp_path):
    for name in ["plate.0001.exr", "plate.0010.exr", "plate.12345.exr", "plate.-001.exr",
                 "plate.07.exr", "plate.0003.exr.bak", ".plate.0004.tmp-ab12.exr",
                 "plate.0005.png"]:
        _touch(tmp_path / name)
    assert scan(str(tmp_path / "plate.####.exr")) == [-1, 1, 10, 12345]
    assert scan(str(tmp_path / "plate.%04d.exr")) == [-1, 1, 10, 12345]
    assert scan(str(tmp_path / "plate.%d.exr")) == [12345]  # unpadded names only
    assert scan(str(tmp_path / "missing_dir" / "plate.####.exr")) == []


def test_plan_keyframes():
    keys = [1, 10, 20, 40]
    assert plan_keyframes(12, keys, 2) == [10, 20]
    # Bracketing keys come in even when another key on one side is nearer.
    assert plan_keyframes(11, [1, 8, 9, 40], 2) == [9, 40]
    assert plan_keyframes(11, [1, 8, 9, 40], 3) == [9, 8, 40]
    assert plan_keyframes(15, keys, 4) == [10, 20, 1, 40]
    assert plan_keyframes(15, keys, 1) == [10]  # tie: earlier frame wins
    assert plan_keyframes(50, keys, 2) == [40, 20]  # all before
    assert plan_keyframes(10, keys, 2) == [10, 1]  # the target itself is a key
    assert plan_keyframes(12, [20, 10, 10, 1, 40], 2) == plan_keyframes(12, keys, 2)
    with pytest.raises(ValueError):
        plan_keyframes(12, [], 2)
    with pytest.raises(ValueError):
        plan_keyframes(12, keys, 0)


def _write_sequence(pattern, frames, size=(12, 16), channels=3):
    for f in frames:
        io.write_image(expand(pattern, f), np.full(size + (channels,), 0.5, np.float32))


@pytest.fixture
def good_shot(tmp_path):
    (tmp_path / "out").mkdir()
    s = Shot(plate=str(tmp_path / "plate.####.exr"), mask=str(tmp_path / "mask.%04d.png"),
             keys=str(tmp_path / "key.####.exr"), out=str(tmp_path / "out" / "fill.####.exr"),
             first=1, last=5)
    _write_sequence(s.plate, range(1, 6))
    _write_sequence(s.mask, range(1, 6), channels=1)
    _write_sequence(s.keys, [1, 5])
    return s


def test_valid_shot(good_shot):
    assert good_shot.validate() == (12, 16)
    assert good_shot.key_frames() == [1, 5]
    good_shot.first = good_shot.last = None
    assert good_shot.frames() == [1, 2, 3, 4, 5]


def test_missing_plate_frame_named(good_shot):
    os.remove(expand(good_shot.plate, 3))
    with pytest.raises(KeypropInputError, match=r"1 plate frame\(s\) missing .*: 3 .*plate\.0003\.exr"):
        good_shot.validate()


def test_missing_mask_frame_named(good_shot):
    good_shot.last = 7
    _write_sequence(good_shot.plate, [6, 7])
    with pytest.raises(KeypropInputError, match=r"2 mask frame\(s\) missing .*: 6, 7"):
        good_shot.validate()


def test_no_keyframe(good_shot, tmp_path):
    good_shot.keys = str(tmp_path / "nokeys.####.exr")
    with pytest.raises(KeypropInputError, match="no keyframes"):
        good_shot.validate()


def test_size_mismatch_names_frame(good_shot):
    _write_sequence(good_shot.mask, [4], size=(12, 15), channels=1)
    with pytest.raises(KeypropInputError, match=r"mask\.0004\.png: mask frame 4 is 15x12, expected 16x12"):
        good_shot.validate()


def test_key_size_mismatch(good_shot):
    _write_sequence(good_shot.keys, [9], size=(10, 16))
    with pytest.raises(KeypropInputError, match="keyframe frame 9 is 16x10"):
        good_shot.validate()


def test_output_must_not_overwrite_input(good_shot, tmp_path):
    good_shot.out = str(tmp_path / "." / "plate.%04d.exr")  # same files, other spelling
    with pytest.raises(KeypropInputError, match="overwrite the plate"):
        good_shot.validate()


def test_output_directory_must_exist(good_shot, tmp_path):
    good_shot.out = str(tmp_path / "nowhere" / "fill.####.exr")
    with pytest.raises(KeypropInputError, match="output directory does not exist"):
        good_shot.validate()


def test_empty_range(good_shot):
    good_shot.first, good_shot.last = 5, 1
    with pytest.raises(KeypropInputError, match="empty"):
        good_shot.validate()
