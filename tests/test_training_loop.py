"""core.training: losses, metrics, the resumable loop, `keyprop train` / `keyprop finetune`, bench/quality.py."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from keyprop import cli
from keyprop.core.model import create_model, load_checkpoint, save_checkpoint
from keyprop.core.training import losses
from keyprop.core.training.loop import ConfigError, TrainConfig, load_config, train
from keyprop.core.training.metrics import flicker, psnr_in_mask, ssim_in_mask
from keyprop.core.training.shots import make_shot, save_shot

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(run_dir, steps=3, **extra):
    cfg = {
        "run_dir": str(run_dir),
        "model": {"preset": "test"},
        "data": {"skimage": False, "procedural": 1.0, "size": 64, "refs": 2, "batch": 2},
        "train": {"steps": steps, "threads": 1, "warmup": 2, "seed": 1},
        "validate_every": 2, "validate_count": 2, "log_every": 1, "checkpoint_every": 1,
    }
    for k, v in extra.items():
        cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    return cfg


# --------------------------------------------------------------------------- losses / metrics

def test_losses_vanish_on_a_perfect_fill_and_have_gradients():
    target = torch.rand(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    w = losses.LossWeights()
    terms = losses.generator_losses(target.clone(), target, mask, w)
    assert float(terms["total"]) < 1e-4
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    terms = losses.generator_losses(pred, target, mask, w)
    assert set(terms) >= {"hole", "known", "gradient", "ssim", "total"}
    terms["total"].backward()
    assert pred.grad.abs().sum() > 0
    assert torch.allclose(losses.ssim(target, target), torch.ones(2, 1, 32, 32), atol=1e-4)


def test_adversarial_term_and_r1_penalty():
    disc = losses.PatchDiscriminator(width=8)
    real = torch.rand(2, 3, 32, 32, requires_grad=True)
    mask = torch.ones(2, 1, 32, 32)
    logits = disc(real, mask)
    assert logits.shape[0] == 2 and logits.shape[1] == 1
    r1 = losses.r1_penalty(logits, real)
    assert r1.item() > 0
    terms = losses.generator_losses(torch.rand(2, 3, 32, 32), real.detach(), mask,
                                    losses.LossWeights(adversarial=0.1), disc)
    assert "adversarial" in terms


def test_metrics_known_values():
    truth = np.full((16, 16, 3), 0.5, np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 4:8] = 1
    pred = truth.copy()
    pred[mask > 0] += 0.1  # only inside the mask
    assert psnr_in_mask(pred, truth, mask) == pytest.approx(20.0, abs=1e-4)
    assert psnr_in_mask(truth, truth, mask) == float("inf")
    assert np.isnan(psnr_in_mask(pred, truth, np.zeros_like(mask)))
    assert ssim_in_mask(truth, truth, mask) == pytest.approx(1.0)
    frames = [truth + 0.01 * i for i in range(3)]
    assert flicker(frames, frames, [mask] * 3) == pytest.approx(0.0)
    assert flicker([truth] * 3, frames, [mask] * 3) == pytest.approx(0.01, abs=1e-6)


# --------------------------------------------------------------------------- loop

def test_train_writes_checkpoints_and_resumes_exactly(tmp_path):
    events = []
    cfg = TrainConfig.from_dict(tiny_config(tmp_path / "a", steps=2))
    result = train(cfg, progress=events.append)
    assert result["step"] == 2
    for name in ("model_last.pt", "model_best.pt", "state.pt", "log.jsonl", "config.yaml"):
        assert (tmp_path / "a" / name).is_file()
    model = load_checkpoint(tmp_path / "a" / "model_last.pt")  # weights_only=True inside
    assert model.preset == "test" and model.provenance.origin == "keyprop-train" and model.provenance.steps == 2
    assert any(e["event"] == "validate" and np.isfinite(e["psnr"]) and 0 < e["ssim"] <= 1 for e in events)
    # resume to 4 steps == an uninterrupted 4-step run
    cfg.train.steps = 4
    train(cfg)
    train(TrainConfig.from_dict(tiny_config(tmp_path / "b", steps=4)))
    a = load_checkpoint(tmp_path / "a" / "model_last.pt").state_dict()
    b = load_checkpoint(tmp_path / "b" / "model_last.pt").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_train_with_adversarial_loss_and_custom_architecture(tmp_path):
    cfg = tiny_config(tmp_path / "c", steps=1, loss={"adversarial": 0.05})
    cfg["model"] = {"config": dict(ngf=8, n_blocks=1, n_cross=1, latent_dim=64, num_heads=2, read_write_heads=2,
                                   num_latents_sqrt=4, block_type="conv")}
    train(TrainConfig.from_dict(cfg))
    model = load_checkpoint(tmp_path / "c" / "model_last.pt")
    assert model.preset == "custom" and model.cfg.block_type == "conv"
    assert "disc" in torch.load(tmp_path / "c" / "state.pt", weights_only=True)


@pytest.mark.parametrize("bad, match", [
    ({"model": {"preset": "huge"}}, "unknown model preset"),
    ({"data": {"colour": 1}}, "unknown keys"),
    ({"train": {"steps": 0}}, "steps"),
    ({"data": {"size": 60}}, "multiple"),
])
def test_bad_configs_are_refused(tmp_path, bad, match):
    cfg = tiny_config(tmp_path / "d")
    for k, v in bad.items():
        cfg[k].update(v)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(cfg)
        train(TrainConfig.from_dict(cfg))


def test_shipped_config_parses():
    cfg = load_config(ROOT / "core" / "training" / "configs" / "small_cpu.yaml")
    assert cfg.model.preset == "small" and cfg.data.size % 8 == 0


# --------------------------------------------------------------------------- CLI

def test_cli_train_and_errors(tmp_path, capsys):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", steps=1)))
    assert cli.main(["train", str(path), "--quiet"]) == 0
    assert (tmp_path / "run" / "model_last.pt").is_file()
    capsys.readouterr()
    for text in ("train: [1, 2\n", "model: {preset: nope}\n"):
        path.write_text(text)
        assert cli.main(["train", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_cli_finetune_adapts_and_writes_a_model(tmp_path, capsys):
    patterns = save_shot(make_shot("pan", frames=4, size=(96, 128)), tmp_path / "shot")
    base = tmp_path / "base.pt"
    save_checkpoint(create_model("test"), base, preset="test")
    out = tmp_path / "tuned.pt"
    args = ["finetune", "--model", str(base), "--plate", patterns["plate"], "--mask",
            patterns["mask"].replace("%04d", "####"), "--keys", patterns["keys"], "--out", str(out),
            "--minutes", "1", "--max-steps", "2", "--size", "64"]
    assert cli.main(args) == 0
    tuned = load_checkpoint(out)
    assert tuned.provenance.origin == "keyprop-finetune" and tuned.provenance.extra["finetune_steps"] == 2
    before = load_checkpoint(base).state_dict()
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    capsys.readouterr()
    bad = list(args)
    bad[bad.index("--keys") + 1] = str(tmp_path / "none.%04d.png")
    assert cli.main(bad) == 2
    err = capsys.readouterr().err
    assert "no keyframes found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- benchmark

def test_quality_benchmark_runs_and_ranks_baselines():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    results, info = quality.run_benchmark("preset:test", ["pan"], frames=4, size=(96, 128))
    r = results["pan"]
    assert set(r) == set(quality.METHODS)
    # on a plain pan, warping the nearest keyframe along DIS flow beats copying it
    assert r["flow_warp"]["psnr"] > r["nearest_key"]["psnr"] + 3
    text = quality.table(results)
    assert "| pan |" in text and "goal" in text
