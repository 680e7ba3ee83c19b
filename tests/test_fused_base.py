"""fused_base models: the network corrects the pipeline's fused fill; their training data are
captured from the pipeline's own code."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import needs_clips
from keyprop.core.api import Settings, fill_frames
from keyprop.core.model import KeyPropNet, get_config, load_checkpoint, save_checkpoint
from keyprop.core.model.context import prefill, with_base
from keyprop.core.runtime import TorchEngine, load_model
from keyprop.core.training.data import example_seed
from keyprop.core.training.fused import CaptureEngine, fused_arrays, fused_example
from keyprop.core.training.loop import TrainConfig, train
from keyprop.core.training.sources import PictureBank

H, W = 64, 96


def fused_model(seed=0, zero_output=False, gate=False):
    torch.manual_seed(seed)
    model = KeyPropNet(dataclasses.replace(get_config("test"), context_base=True, fused_base=True,
                                           fused_gate=gate)).eval()
    model.preset = "test"
    if zero_output:
        torch.nn.init.zeros_(model.decoder.to_rgb.weight)
        torch.nn.init.zeros_(model.decoder.to_rgb.bias)
    return model


def picture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(x / 7 + y / 11), 0.4 + 0.3 * np.cos(y / 5), 0.5 + 0.2 * np.sin((x - y) / 9)], 2)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)


def panned_shot(frames=4, h=128, w=160):
    """A picture panning right under a box occluder that moves faster (each frame's hole is
    shown by its neighbours)."""
    big = picture(h, w + 4 * frames)
    plates, masks, truths = [], [], []
    for i in range(frames):
        truth = big[:, 3 * i:3 * i + w].copy()
        mask = np.zeros((h, w), np.float32)
        mask[40:80, 20 + 34 * i:50 + 34 * i] = 1
        plates.append(np.where(mask[:, :, None] > 0, np.float32(0.05), truth))
        masks.append(mask)
        truths.append(truth)
    return plates, masks, truths


def test_config_rules():
    with pytest.raises(ValueError, match="fused_base needs context_base"):
        dataclasses.replace(get_config("test"), fused_base=True)
    with pytest.raises(ValueError, match="no equivalent in the authors' generator"):
        dataclasses.replace(get_config("paper"), context_base=True, fused_base=True).to_reference()
    assert get_config("paper").fused_base is False
    with pytest.raises(ValueError, match="fused_gate needs fused_base"):
        dataclasses.replace(get_config("test"), fused_gate=True)


def gate_inputs(shift_x=0.0, err=0.0, seed=4):
    """A target whose hole holds ``base`` = the truth, one source = the truth shifted right by
    3 px, seen along a flow of 3 + ``shift_x`` px with error ``err``."""
    rgb = picture(H, W + 8, seed=seed)
    truth, src_rgb = rgb[:, :W], rgb[:, 3:W + 3]
    hole = np.zeros((H, W), np.float32)
    hole[20:40, 30:60] = 1
    target = np.concatenate([(truth * (1 - hole[:, :, None])).transpose(2, 0, 1), hole[None]])
    target = with_base(target.astype(np.float32), np.ascontiguousarray(truth.transpose(2, 0, 1)))
    src = np.concatenate([src_rgb.transpose(2, 0, 1), np.zeros((1, H, W))]).astype(np.float32)
    flows = np.zeros((1, 2, H, W), np.float32)
    flows[0, 0] = -3.0 + shift_x
    errs = np.full((1, 1, H, W), err, np.float32)
    return (torch.from_numpy(target)[None], torch.from_numpy(src)[None, None], torch.from_numpy(flows)[None],
            torch.from_numpy(errs)[None], hole > 0)


def test_the_gate_keeps_a_base_that_a_source_confirms():
    gated, plain = fused_model(seed=6, gate=True), fused_model(seed=6)
    target, srcs, flows, errs, hole = gate_inputs()
    with torch.no_grad():
        kept = gated(target, srcs, flows, errs)[0].numpy()
        moved = plain(target, srcs, flows, errs)[0].numpy()
        doubted = gated(*gate_inputs(shift_x=9.0)[:4])[0].numpy()       # the source disagrees
        distrusted = gated(*gate_inputs(err=8.0)[:4])[0].numpy()        # its flow is unreliable
    base = target[0, :3].numpy()
    # A source that shows the hole as the base has it: the correction is gated off there ...
    assert np.abs(kept - base)[:, hole].max() < 5e-3
    # ... where the same weights without the gate change it, as they do when the source disagrees
    # or its flow error is large.
    for out in (moved, doubted, distrusted):
        assert np.abs(out - base)[:, hole].mean() > 10 * np.abs(kept - base)[:, hole].mean()


def test_with_base_fills_only_the_hole():
    rgb, hole = picture(H, W), np.zeros((H, W), np.float32)
    hole[10:30, 20:50] = 1
    frame = np.concatenate([(rgb * (1 - hole[:, :, None])).transpose(2, 0, 1), hole[None]])
    base = np.full((3, H, W), 0.25, np.float32)
    out = with_base(frame, base)
    assert np.array_equal(out[:, hole == 0], frame[:, hole == 0]) and np.array_equal(out[3], hole)
    assert np.all(out[:3, hole > 0] == 0.25)
    with pytest.raises(ValueError, match="base must be"):
        with_base(frame, base[:, :10])


@pytest.mark.parametrize("gate", [False, True])
def test_engines_take_the_base_as_the_targets_hole(tmp_path, gate):
    from keyprop.export.engine import OnnxEngine

    model = fused_model(seed=1, gate=gate)
    path = tmp_path / "fb.pt"
    save_checkpoint(model, path, preset="test")
    engine = TorchEngine(load_model(str(path)), device="cpu")
    assert engine.fused_base
    rgb, hole = picture(H, W), np.zeros((H, W), np.float32)
    hole[20:40, 30:60] = 1
    frame = np.concatenate([(rgb * (1 - hole[:, :, None])).transpose(2, 0, 1), hole[None]]).astype(np.float32)
    base = np.ascontiguousarray(rgb.transpose(2, 0, 1) * 0.9)
    flows, errs = np.zeros((1, 2, H, W), np.float32), np.zeros((1, 1, H, W), np.float32)
    got = engine.fill(frame, [engine.encode_keyframe(frame)], flows, errs, base)
    with torch.no_grad():
        src = torch.from_numpy(prefill(frame))[None, None]
        want = model(torch.from_numpy(with_base(frame, base))[None], src, torch.from_numpy(flows)[None],
                     torch.from_numpy(errs)[None])[0].numpy()
    assert np.abs(got - want).max() < 1e-4
    # without a base the target is prefilled by Telea, as for any context_base model
    assert np.abs(engine.fill(frame, [engine.encode_keyframe(frame)], flows, errs) - got).max() > 1e-3
    onnx = OnnxEngine(str(path), device="cpu", threads=1, cache_dir=tmp_path / "cache")
    assert onnx.fused_base
    assert np.abs(onnx.fill(frame, [onnx.encode_keyframe(frame)], flows, errs, base) - want).max() <= 1e-4
    again = OnnxEngine(str(onnx.folder), device="cpu", threads=1)
    assert again.fused_base


def test_pipeline_refines_every_fill_and_only_inside_the_mask():
    plates, masks, truths = panned_shot()
    # With the output layer at zero the correction is nothing: the fill is the fused one
    # (to the logit clamp's 1e-3), network on or off.
    zero = TorchEngine(fused_model(seed=2, zero_output=True), device="cpu")
    on = fill_frames(plates, masks, [], zero, Settings(work_res=160))
    off = fill_frames(plates, masks, [], zero, Settings(work_res=160, refine=False))
    for a, b in zip(on, off):
        assert np.abs(a - b).max() <= 2e-3
    # A network that changes things changes them inside the mask only, on every frame.
    calls = []
    engine = TorchEngine(fused_model(seed=3), device="cpu")
    real_fill = engine.fill
    engine.fill = lambda *a, **k: calls.append(k.get("base", a[4] if len(a) > 4 else None)) or real_fill(*a, **k)
    refined = fill_frames(plates, masks, [], engine, Settings(work_res=160))
    assert len(calls) == len(plates) and all(c is not None for c in calls)
    for r, o, p, m in zip(refined, off, plates, masks):
        assert np.array_equal(r[m == 0], p[m == 0])
        assert np.abs(r - o)[m > 0].max() > 1e-3


def test_captured_examples_are_the_pipelines_inputs_and_deterministic():
    bank = PictureBank(images=[picture(200, 240, seed=5)], procedural=0.3)
    a = fused_example(bank, example_seed(4, 7), 64, 3)
    b = fused_example(bank, example_seed(4, 7), 64, 3)
    for k in ("target", "base", "flows", "flow_errs", "truth"):
        assert np.array_equal(a[k], b[k]), k
    arrays = fused_arrays(a, 3)
    hole = arrays["mask"][0] > 0
    assert hole.any() and arrays["srcs"].shape == (3, 4, 64, 64) and arrays["flows"].shape == (3, 2, 64, 64)
    assert np.array_equal(arrays["input"][:3, hole], np.clip(a["base"], 0, 1)[:, hole])   # the fused fill
    assert np.array_equal(arrays["input"][:3, ~hole], a["target"][:3, ~hole])             # the plate
    assert arrays["target"].shape == (3, 64, 64)
    # The fused fill is a good start: far better than the occluder the plate shows.
    base_err = np.abs(arrays["input"][:3] - arrays["target"])[:, hole].mean()
    assert base_err < 0.15, base_err
    assert CaptureEngine.fused_base and CaptureEngine.context_base


def test_train_a_fused_base_model_from_an_init(tmp_path):
    init = tmp_path / "plain.pt"
    torch.manual_seed(0)
    save_checkpoint(load_model("preset:test"), init, preset="test")
    cfg = {"run_dir": str(tmp_path / "run"), "model": {"preset": "test", "init": str(init), "fused_base": True},
           "data": {"skimage": False, "procedural": 1.0, "size": 64, "refs": 2, "batch": 2},
           "train": {"steps": 2, "threads": 1, "warmup": 1, "seed": 1},
           "validate_every": 1, "validate_count": 2, "log_every": 1, "checkpoint_every": 1}
    events = []
    train(TrainConfig.from_dict(cfg), progress=events.append)
    model = load_checkpoint(tmp_path / "run" / "model_last.pt")
    assert model.cfg.fused_base and model.cfg.context_base
    first = next(e for e in events if e["event"] == "validate")
    # step 0 is the fused fill itself (to the logit clamp)
    assert first["step"] == 0 and abs(first["psnr"] - first["base_psnr"]) < 0.05


@needs_clips
def test_training_sequences_leave_the_benchmark_out():
    from keyprop.core.training import footage

    ranges = footage.training_ranges()
    assert len(ranges) >= 5
    for clip, a, b in ranges:
        lo, hi = footage.HELD_OUT[clip]
        assert b <= lo or a >= hi, (clip, a, b)                           # no benchmark frame
        assert not any(a < c < b for c in footage.clip_cuts(clip))       # no cut inside
        lo_b, hi_b = footage.DEFAULT_START[clip], footage.DEFAULT_START[clip] + 32
        assert lo <= lo_b and hi >= hi_b
    seqs = footage.training_sequences(max_side=96)
    assert [len(s) for s in seqs] == [b - a for _, a, b in ranges]
    assert max(max(s[0].shape[:2]) for s in seqs) <= 96


def test_worker_processes_make_the_same_batches(tmp_path):
    """data.workers > 0 (what a GPU run uses) trains on exactly the inline batches."""
    from keyprop.core.training.loop import Trainer

    cfg = {"run_dir": str(tmp_path / "run"), "model": {"preset": "test", "context_base": True, "fused_base": True},
           "data": {"skimage": False, "procedural": 1.0, "size": 64, "refs": 2, "batch": 2, "workers": 2},
           "train": {"steps": 3, "threads": 1}, "validate_count": 0}
    trainer = Trainer(TrainConfig.from_dict(cfg))
    trainer.step = 1
    got = list(trainer._batches())
    assert len(got) == 2
    for step, batch in zip((1, 2), got):
        want = trainer.stream.batch_at(step)
        assert all(torch.equal(batch[k], want[k]) for k in want)


def test_network_ablation_bench_runs(tmp_path, capsys):
    """bench/network_ablation.py: network off vs on, side by side, on the static-occluder shot."""
    from conftest import load_script

    path = tmp_path / "fb.pt"
    save_checkpoint(fused_model(seed=4), path, preset="test")
    bench = load_script("bench/network_ablation.py", "network_ablation_under_test")
    out = tmp_path / "ablation.json"
    assert bench.main(["--model", str(path), "--off-model", "preset:test", "--parts", "static",
                       "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| no_keys | static_occluder |" in text and "telea PSNR" in text
    import json
    row = json.loads(out.read_text())["static"]["no_keys/static_occluder"]
    assert set(row) == {"off", "on", "telea"} and all(np.isfinite(row[k]["psnr"]) for k in row)
    with pytest.raises(SystemExit, match="not a fused_base model"):
        bench.main(["--model", "preset:test", "--parts", "static"])


@pytest.mark.parametrize("config", ["fused_base.yaml", "fused_gate_gpu.yaml"])
def test_shipped_fused_base_recipe_runs_a_step_on_cpu(tmp_path, config):
    """core/training/configs/fused_base.yaml and fused_gate_gpu.yaml (the GPU recipes,
    `--device cuda --workers N --minutes M --run-dir DIR`; tools/gpu_train.sh) for one step on
    the CPU, with a worker process making the data; the picture folder
    (tools/fetch_pictures.py) is left out here."""
    from pathlib import Path

    from keyprop.core.training.loop import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "core" / "training" / "configs" / config)
    assert cfg.model.fused_base is True and cfg.data.clips is True and cfg.model.init == "models/default.pt"
    assert bool(cfg.model.fused_gate) is (config == "fused_gate_gpu.yaml")
    cfg.model.init = str(root / "models" / "default.pt")
    cfg.data.folders, cfg.data.clips, cfg.data.workers = [], False, 1
    cfg.data.batch, cfg.train.steps, cfg.validate_count = 1, 1, 1
    cfg.run_dir = str(tmp_path / "run")
    result = train(cfg, max_seconds=600)
    assert result["step"] == 1
    model = load_checkpoint(tmp_path / "run" / "model_last.pt")
    assert model.cfg.fused_base and model.provenance.extra["hardware"].endswith("thread(s)")
