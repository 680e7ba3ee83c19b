"""context_base models: holes prefilled from their surroundings, the network a residual on that fill."""
import dataclasses

import numpy as np
import pytest
import torch

from keyprop.core.model import KeyPropNet, get_config, save_checkpoint
from keyprop.core.model.context import prefill
from keyprop.core.model.network import CONTEXT_EPS
from keyprop.core.runtime import TorchEngine, load_model
from keyprop.core.training.data import ExampleStream, network_arrays
from keyprop.core.training.loop import TrainConfig, train
from keyprop.core.training.sources import PictureBank
from keyprop.core.training.synth import SynthSettings, make_example

H, W = 64, 96


def holed(rgb, hole):
    """The engines' frame convention: (4, H, W), hole zeroed, then the mask."""
    return np.concatenate([(rgb * (1 - hole[:, :, None])).transpose(2, 0, 1), hole[None]]).astype(np.float32)


def smooth_picture(h=H, w=W):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.2 + 0.6 * x / w, 0.3 + 0.4 * y / h, np.full_like(x, 0.7)], axis=2)


def box_hole(h=H, w=W):
    hole = np.zeros((h, w), np.float32)
    hole[20:40, 30:60] = 1.0
    return hole


def context_model(preset="test", seed=0):
    torch.manual_seed(seed)
    model = KeyPropNet(dataclasses.replace(get_config(preset), context_base=True)).eval()
    model.preset = preset
    return model


def test_prefill_fills_only_the_hole_from_its_surroundings():
    rgb, hole = smooth_picture(), box_hole()
    frame = holed(rgb, hole)
    out = prefill(frame)
    assert out.dtype == np.float32 and out.shape == frame.shape
    assert np.array_equal(out[:, hole == 0], frame[:, hole == 0])      # known pixels and mask untouched
    assert np.array_equal(out[3], frame[3])
    # A smooth ramp is continued into the hole (the zeroed hole would be off by ~0.5).
    err = np.abs(out[:3].transpose(1, 2, 0) - rgb)[hole > 0]
    assert err.mean() < 0.03 and err.max() < 0.12
    # Flat field: exact to Telea's rounding (OpenCV's float Telea is wrong on [0, 1] values).
    flat = holed(np.full((H, W, 3), 0.8, np.float32), hole)
    assert np.abs(prefill(flat)[:3, hole > 0] - 0.8).max() < 0.01


def test_prefill_without_hole_or_all_hole():
    rgb = smooth_picture()
    none = holed(rgb, np.zeros((H, W), np.float32))
    assert np.array_equal(prefill(none), none) and prefill(none) is not none
    full = prefill(holed(rgb, np.ones((H, W), np.float32)))
    assert np.all(full[:3] == 0.5) and np.all(full[3] == 1)


def test_config_rules():
    with pytest.raises(ValueError, match="context_base needs out_act 'sigmoid'"):
        dataclasses.replace(get_config("test"), context_base=True, out_act="tanh")
    with pytest.raises(ValueError, match="no equivalent in the authors' generator"):
        dataclasses.replace(get_config("paper"), context_base=True).to_reference()
    assert get_config("paper").context_base is False   # the published generator is unchanged


def test_network_output_is_a_residual_on_the_target():
    model = context_model()
    torch.nn.init.zeros_(model.decoder.to_rgb.weight)
    torch.nn.init.zeros_(model.decoder.to_rgb.bias)
    frame = torch.from_numpy(prefill(holed(smooth_picture(), box_hole())))[None]
    srcs = frame[:, None]
    flows, errs = torch.zeros(1, 1, 2, H, W), torch.zeros(1, 1, 1, H, W)
    with torch.no_grad():
        out = model(frame, srcs, flows, errs)
    # zero residual: the output is the (prefilled) target itself, clamped to [eps, 1 - eps]
    want = frame[:, :3].clamp(CONTEXT_EPS, 1 - CONTEXT_EPS)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    # a non-zero residual moves it, and gradients reach the whole network
    model.train()
    torch.nn.init.normal_(model.decoder.to_rgb.weight, std=0.05)
    out = model(frame, srcs, flows, errs)
    assert (out - want).abs().max() > 1e-3
    out.mean().backward()
    assert model.encoder.stem.conv.weight.grad.abs().sum() > 0


def test_torch_engine_prefills_every_frame(tmp_path):
    model = context_model(seed=1)
    path = tmp_path / "cb.pt"
    save_checkpoint(model, path, preset="test")
    engine = TorchEngine(load_model(str(path)), device="cpu")
    assert engine.context_base
    rgb, hole = smooth_picture(), box_hole()
    frame = holed(rgb, hole)
    flows, errs = np.zeros((1, 2, H, W), np.float32), np.zeros((1, 1, H, W), np.float32)
    got = engine.fill(frame, [engine.encode_keyframe(frame)], flows, errs)
    # the same network fed the prefilled frame by hand
    with torch.no_grad():
        pre = torch.from_numpy(prefill(frame))[None]
        want = model.eval()(pre, pre[:, None], torch.from_numpy(flows)[None], torch.from_numpy(errs)[None])
    assert np.abs(got - want[0].numpy()).max() < 1e-4


def test_onnx_engine_prefills_like_the_torch_engine(tmp_path):
    import json

    from keyprop.export.engine import OnnxEngine

    model = context_model(seed=2)
    path = tmp_path / "cb.pt"
    save_checkpoint(model, path, preset="test")
    torch_engine = TorchEngine(load_model(str(path)), device="cpu")
    frame = holed(smooth_picture(), box_hole())
    flows, errs = np.zeros((1, 2, H, W), np.float32), np.zeros((1, 1, H, W), np.float32)
    want = torch_engine.fill(frame, [torch_engine.encode_keyframe(frame)], flows, errs)
    engine = OnnxEngine(str(path), device="cpu", threads=1, cache_dir=tmp_path / "cache")
    got = engine.fill(frame, [engine.encode_keyframe(frame)], flows, errs)
    assert np.abs(got - want).max() <= 1e-4
    # an export folder says so in its manifest, and an engine opened on the folder prefills too
    assert json.loads((engine.folder / "manifest.json").read_text())["context_base"] is True
    again = OnnxEngine(str(engine.folder), device="cpu", threads=1)
    assert again.context_base
    assert np.abs(again.fill(frame, [again.encode_keyframe(frame)], flows, errs) - want).max() <= 1e-4


def test_training_data_are_prefilled_for_context_base_models():
    bank = PictureBank(images=[smooth_picture(96, 96)], procedural=0.0)
    example = make_example(bank, np.random.default_rng(0), 64, 2, SynthSettings(self_source_prob=1.0))
    plain, filled = network_arrays(example), network_arrays(example, prefill=True)
    hole = plain["mask"][0] > 0
    assert hole.any() and np.all(plain["input"][:3, hole] == 0)
    assert np.array_equal(filled["input"], prefill(plain["input"]))
    assert np.array_equal(filled["srcs"][0], prefill(plain["srcs"][0]))
    assert np.array_equal(filled["target"], plain["target"])


def test_train_switches_context_base_on_from_an_init(tmp_path):
    init = tmp_path / "plain.pt"
    torch.manual_seed(0)
    save_checkpoint(load_model("preset:test"), init, preset="test")
    cfg = {"run_dir": str(tmp_path / "run"), "model": {"preset": "test", "init": str(init), "context_base": True},
           "data": {"skimage": False, "procedural": 1.0, "size": 64, "refs": 2, "batch": 2,
                    "synth": {"self_source_prob": 0.5}},
           "train": {"steps": 2, "threads": 1, "warmup": 1, "seed": 1},
           "validate_every": 1, "validate_count": 2, "log_every": 1, "checkpoint_every": 1}
    events = []
    train(TrainConfig.from_dict(cfg), progress=events.append)
    from keyprop.core.model import load_checkpoint

    model = load_checkpoint(tmp_path / "run" / "model_last.pt")
    assert model.cfg.context_base and model.preset == "test"
    # step 0's validation is the prefill itself (the output layer starts at zero): far above
    # what the random network makes of the holes
    first = next(e for e in events if e["event"] == "validate")
    assert first["step"] == 0 and first["psnr"] > 15
    assert ExampleStream.__dataclass_fields__["prefill"].default is False


def test_pipeline_fills_a_never_revealed_hole_from_its_context(tmp_path):
    """A single frame, no keyframe: the pipeline hands the network the holed frame and the
    engine prefills it; with a zero residual the fill is the context's colour ramp, and
    nothing outside the mask changes."""
    from keyprop.core.api import Settings, fill_frames

    model = context_model(seed=3)
    torch.nn.init.zeros_(model.decoder.to_rgb.weight)
    torch.nn.init.zeros_(model.decoder.to_rgb.bias)
    engine = TorchEngine(model, device="cpu")
    rgb, hole = smooth_picture(128, 160), box_hole(128, 160)
    plate = np.where(hole[:, :, None] > 0, np.float32(0.05), rgb)     # a dark occluder
    out = fill_frames([plate], [hole], [], engine, Settings(work_res=160))[0]
    assert np.array_equal(out[hole == 0], plate[hole == 0])
    err = np.abs(out - rgb)[hole > 0]
    assert err.mean() < 0.04, err.mean()          # the occluder's 0.05 would be ~0.4 off


def test_shipped_model_and_config_are_context_base():
    from pathlib import Path

    from keyprop.core.model import load_checkpoint
    from keyprop.core.training.loop import load_config

    root = Path(__file__).resolve().parents[1]
    assert load_checkpoint(root / "models" / "default.pt").cfg.context_base
    cfg = load_config(root / "core" / "training" / "configs" / "context_base.yaml")
    assert cfg.model.context_base is True and cfg.data.synth["self_source_prob"] > 0.5


def test_single_image_frame_is_prefilled_once(monkeypatch):
    """The single-image path encodes the frame as its own source and fills it: one prefill."""
    from keyprop.core.api import Settings, fill_frames
    from keyprop.core.model import context

    calls = []
    real = context.prefill
    monkeypatch.setattr(context, "prefill", lambda f: calls.append(f.shape) or real(f))
    engine = TorchEngine(context_model(seed=4), device="cpu")
    rgb, hole = smooth_picture(128, 160), box_hole(128, 160)
    fill_frames([rgb], [hole], [], engine, Settings(work_res=160))
    assert len(calls) == 1
    # a plain model's frames pass through as float32, never prefilled
    plain = context.NetworkFrames(False)
    frame = holed(rgb, hole).astype(np.float64)
    out = plain(frame)
    assert out.dtype == np.float32 and np.array_equal(out, frame) and len(calls) == 1
