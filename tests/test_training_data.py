"""core.training data: masks, picture sources, synthetic examples, the network's tensors, test shots."""
import numpy as np
import pytest

from keyprop.core import flow as flowlib
from keyprop.core.io import write_image
from keyprop.core.training import masks as masklib
from keyprop.core.training.data import ExampleStream, example_seed, network_arrays
from keyprop.core.training.shots import KINDS, make_shot, save_shot
from keyprop.core.training.sources import PictureBank, load_folder, procedural_texture, to_rgb_float
from keyprop.core.training.synth import SynthSettings, make_example, motion_homography, render_view


def rng(i=0):
    return np.random.default_rng(i)


def test_masks_shapes_coverage_and_determinism():
    s = masklib.MaskSettings()
    for i in range(20):
        m = masklib.random_mask((96, 128), rng(i), s)
        assert m.shape == (96, 128) and m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert s.min_cover <= m.mean() <= s.max_cover
    np.testing.assert_array_equal(masklib.random_mask((64, 64), rng(3)), masklib.random_mask((64, 64), rng(3)))
    assert masklib.boxes((64, 64), rng(1)).any() and masklib.irregular_strokes((64, 64), rng(1)).any()
    b = masklib.blob((64, 64), rng(2), 0.5)
    assert 0 <= b.min() and b.max() <= 1 and b[32, 32] > 0.5 and b[0, 0] == 0


def test_to_rgb_float_handles_gray_alpha_bool_and_size():
    assert to_rgb_float(np.zeros((10, 20), np.uint8)).shape == (10, 20, 3)
    assert to_rgb_float(np.ones((10, 20, 4), np.uint16) * 65535).max() == 1.0
    assert to_rgb_float(np.ones((8, 8), bool)).dtype == np.float32
    assert to_rgb_float(np.zeros((100, 200, 3), np.float32), max_side=50).shape == (25, 50, 3)


def test_load_folder_finds_pictures_and_sequences(tmp_path):
    pic = procedural_texture(rng(0), 96)
    write_image(tmp_path / "still.png", pic)
    (tmp_path / "shot").mkdir()
    for i in range(3):
        write_image(tmp_path / "shot" / f"frame.{i:04d}.png", np.roll(pic, 4 * i, axis=1))
    images, sequences = load_folder(tmp_path)
    assert len(images) == 1 and len(sequences) == 1 and len(sequences[0]) == 3
    assert images[0].shape == (96, 96, 3)
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing")


def test_motion_homography_is_identity_without_motion():
    s = SynthSettings(shift_small=0, shift_large=0, rotate_deg=1e-9, scale_std=0, shear=0, perspective=0)
    np.testing.assert_allclose(motion_homography(rng(0), 64, s), np.eye(3), atol=1e-6)
    pic = procedural_texture(rng(1), 64)
    np.testing.assert_allclose(render_view(pic, np.eye(3), 64), pic, atol=1e-5)


@pytest.mark.parametrize("foreground", [0.0, 1.0])
def test_make_example_shapes_ranges_determinism(foreground):
    bank = PictureBank([procedural_texture(rng(5), 160)], procedural=0.5)
    s = SynthSettings(foreground_prob=foreground)
    ex = make_example(bank, rng(7), 64, 3, s)
    assert ex["target"].shape == (64, 64, 3) and ex["refs"].shape == (3, 64, 64, 3)
    assert ex["mask"].shape == (64, 64) and ex["ref_masks"].shape == (3, 64, 64)
    for k in ("target", "refs", "plate"):
        assert 0.0 <= ex[k].min() and ex[k].max() <= 1.0
    # 8-bit like the plates inference sees
    np.testing.assert_allclose(ex["target"] * 255, np.round(ex["target"] * 255), atol=1e-3)
    # the plate differs from the truth only inside the hole
    outside = ex["mask"] == 0
    np.testing.assert_array_equal(ex["plate"][outside], ex["target"][outside])
    again = make_example(bank, rng(7), 64, 3, s)
    for k in ex:
        np.testing.assert_array_equal(ex[k], again[k])


def test_sequence_examples_use_real_frames():
    frames = [procedural_texture(rng(i), 96) for i in range(4)]
    bank = PictureBank(sequences=[frames], procedural=0.0, sequence_share=1.0)
    ex = make_example(bank, rng(0), 64, 2, SynthSettings(colour_std=0, exposure=0))
    assert ex["refs"].shape == (2, 64, 64, 3)


def test_network_arrays_follow_the_network_conventions():
    """A pure shift: DIS flow from the target must point at the same content in the reference."""
    pic = procedural_texture(rng(2), 128)
    target, ref = pic[16:80, 16:80], pic[16:80, 20:84]  # ref(x) = pic(x + 4): target(x) = ref(x - 4)
    mask = np.zeros((64, 64), np.float32)
    mask[24:40, 24:40] = 1
    ex = dict(target=target, mask=mask, plate=target * (1 - mask[:, :, None]), refs=ref[None],
              ref_masks=np.zeros((1, 64, 64), np.float32), ref_plates=ref[None])
    arr = network_arrays(ex)
    assert arr["input"].shape == (4, 64, 64) and arr["srcs"].shape == (1, 4, 64, 64)
    assert arr["flows"].shape == (1, 2, 64, 64) and arr["flow_errs"].shape == (1, 1, 64, 64)
    np.testing.assert_array_equal(arr["input"][3], mask)
    assert np.all(arr["input"][:3, 24:40, 24:40] == 0)
    np.testing.assert_array_equal(arr["target"], target.transpose(2, 0, 1))
    centre = arr["flows"][0, :, 28:36, 28:36]
    np.testing.assert_allclose(np.median(centre[0]), -4.0, atol=1.0)  # channel 0 = x
    np.testing.assert_allclose(np.median(centre[1]), 0.0, atol=1.0)
    warped = flowlib.warp(ref, arr["flows"][0].transpose(1, 2, 0))
    assert np.abs(warped[24:40, 24:40] - target[24:40, 24:40]).mean() < 0.05


def test_example_stream_is_a_pure_function_of_seed_and_index():
    bank = PictureBank(procedural=1.0, texture_size=96)
    a = ExampleStream(bank, 64, 2, 2, seed=3)
    b1, b2 = a.batch_at(5), a.batch_at(5)
    for k in b1:
        assert b1[k].shape[0] == 2
        assert (b1[k] == b2[k]).all()
    assert not (a.batch_at(6)["target"] == b1["target"]).all()
    assert example_seed(1, 2).random() == example_seed(1, 2).random()


def test_shots_every_kind(tmp_path):
    for kind in KINDS:
        shot = make_shot(kind, frames=4, size=(64, 96))
        assert len(shot.plates) == 4 and shot.keys == [0, 3]
        for plate, truth, mask in zip(shot.plates, shot.truths, shot.masks):
            assert plate.shape == (64, 96, 3) and mask.shape == (64, 96)
            assert mask.any()
            np.testing.assert_array_equal(plate[mask == 0], truth[mask == 0])
        frames = shot.frames_for_fill()
        np.testing.assert_array_equal(frames[0], shot.truths[0])
    with pytest.raises(ValueError, match="unknown shot kind"):
        make_shot("dolly")
    patterns = save_shot(make_shot("pan", frames=3, size=(64, 64)), tmp_path)
    assert (tmp_path / "keys.0000.png").exists() and not (tmp_path / "keys.0001.png").exists()
    assert patterns["plate"].endswith("plate.%04d.png")


def test_numbered_unrelated_stills_are_not_a_sequence(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"DSC_{i:04d}.png", procedural_texture(rng(10 + i), 80))
    images, sequences = load_folder(tmp_path)
    assert len(images) == 3 and sequences == []


def test_self_source_examples_are_single_image_inpainting():
    """self_source_prob=1: every source is the holed target itself, with zero flow and error,
    exactly what the pipeline hands the network when no frame shows the hole."""
    bank = PictureBank([procedural_texture(rng(5), 160)], procedural=0.5)
    ex = make_example(bank, rng(3), 64, 2, SynthSettings(self_source_prob=1.0))
    for i in range(2):
        np.testing.assert_array_equal(ex["refs"][i], ex["target"])
        np.testing.assert_array_equal(ex["ref_masks"][i], ex["mask"])
        np.testing.assert_array_equal(ex["ref_plates"][i], ex["plate"])
    arr = network_arrays(ex)
    assert not arr["flows"].any() and not arr["flow_errs"].any()
    np.testing.assert_array_equal(arr["srcs"][0], arr["input"])   # the source is the network's own input
    plain = make_example(bank, rng(3), 64, 2, SynthSettings(self_source_prob=0.0))
    assert not np.array_equal(plain["ref_masks"][0], plain["mask"]) or not plain["mask"].any()


def test_recolour_turns_grey_pictures_into_colour_and_is_off_by_default():
    grey = np.repeat(np.linspace(0, 1, 160 * 160, dtype=np.float32).reshape(160, 160, 1), 3, axis=2)
    bank = PictureBank([grey], procedural=0.0)
    plain = make_example(bank, rng(4), 64, 1, SynthSettings())
    assert np.abs(plain["target"] - plain["target"].mean(axis=2, keepdims=True)).max() < 1e-6
    # recolour_prob 0 draws nothing: the example stream of older configs is unchanged.
    again = make_example(bank, rng(4), 64, 1, SynthSettings(recolour_prob=0.0))
    assert all(np.array_equal(plain[k], again[k]) for k in plain)
    spread = [np.abs(ex["target"] - ex["target"].mean(axis=2, keepdims=True)).max()
              for ex in (make_example(bank, rng(i), 64, 1, SynthSettings(recolour_prob=1.0)) for i in range(6))]
    assert max(spread) > 0.05
