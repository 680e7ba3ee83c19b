"""Presets, our checkpoint format, keyframe cache, the k x k deformable warp."""
import pytest
import torch

from keyprop.core.model import (KeyframeCache, KeyPropNet, NetConfig, count_parameters, create_model, get_config,
                                list_presets, load_checkpoint, save_checkpoint)


def randomize_norms(model):
    """Non-trivial BatchNorm statistics so eval-mode paths are really exercised."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def inputs(t, h, w, b=1):
    return (torch.rand(b, 4, h, w), torch.rand(b, t, 4, h, w), torch.randn(b, t, 2, h, w) * 3,
            torch.rand(b, t, 1, h, w))


def test_registry():
    assert {"paper", "small", "test"} <= set(list_presets())
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*paper"):
        create_model("huge")
    assert abs(count_parameters(get_config("paper")) / 1e6 - 47.6) < 0.05
    assert count_parameters(get_config("small")) < count_parameters(get_config("paper")) / 4


@pytest.mark.parametrize("preset,t,h,w", [("test", 1, 64, 64), ("test", 3, 64, 96), ("test", 4, 72, 56),
                                           ("small", 3, 128, 136)])
def test_cache_equals_uncached(preset, t, h, w):
    model = randomize_norms(create_model(preset)).eval()
    x, srcs, flows, errs = inputs(t, h, w)
    with torch.inference_mode():
        full = model(x, srcs, flows, errs)
        cache = KeyframeCache.cat([model.encode_keyframes(srcs[:, i:i + 1]) for i in range(t)])
        cached = model.fill(x, cache, flows, errs)
    assert cache.count == t
    assert (full - cached).abs().max().item() <= 1e-5


def test_paper_cache_equals_uncached_and_is_reused():
    model = randomize_norms(create_model("paper")).eval()
    x, srcs, flows, errs = inputs(2, 128, 136)
    with torch.inference_mode():
        cache = model.encode_keyframes(srcs)
        for _ in range(2):  # one cache, several targets
            target = torch.rand_like(x)
            assert (model(target, srcs, flows, errs) - model.fill(target, cache, flows, errs)).abs().max() <= 1e-5
    assert len(cache.kv) == 2 and len(cache.lifs) == 2
    assert cache.lifs[0].shape == (1, 2, 512, 16, 17)


def test_batch_of_targets():
    model = randomize_norms(create_model("test")).eval()
    x, srcs, flows, errs = inputs(2, 64, 64, b=2)
    with torch.inference_mode():
        both = model(x, srcs, flows, errs)
        one = model(x[1:], srcs[1:], flows[1:], errs[1:])
    assert (both[1:] - one).abs().max() <= 1e-5


def test_bad_sizes_are_explained():
    model = create_model("test")
    x, srcs, flows, errs = inputs(1, 60, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(x, srcs, flows, errs)
    x, srcs, flows, errs = inputs(1, 64, 64)
    with pytest.raises(ValueError, match="flows and flow_errs are required"):
        model(x, srcs)
    with pytest.raises(ValueError, match="encoded at"):
        model.fill(torch.rand(1, 4, 72, 64), model.encode_keyframes(srcs), flows, errs)


def test_checkpoint_round_trip(tmp_path):
    model = randomize_norms(create_model("test"))
    save_checkpoint(model, tmp_path / "m.pt", preset="test")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["preset"] == "test" and payload["config"]["ngf"] == 8
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == model.cfg and loaded.preset == "test"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    again = create_model("test", tmp_path / "m.pt")
    assert again.cfg == model.cfg
    with pytest.raises(ValueError, match="differs from preset 'small'"):
        create_model("small", tmp_path / "m.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_deformable_warp_starts_as_paper_warp_and_learns():
    base = NetConfig(ngf=8, n_blocks=1, n_cross=1, latent_dim=64, num_heads=4, read_write_heads=4,
                     num_latents_sqrt=4, warp_kernel=1)
    deform = NetConfig(**{**base.to_dict(), "warp_kernel": 3, "warp_offset_groups": 4})
    paper_net, deform_net = randomize_norms(KeyPropNet(base)).eval(), KeyPropNet(deform).eval()
    missing, unexpected = deform_net.load_state_dict(paper_net.state_dict(), strict=False)
    assert not unexpected and all(".control." in k or ".sample_" in k for k in missing)
    x, srcs, flows, errs = inputs(2, 64, 64)
    with torch.inference_mode():
        assert (paper_net(x, srcs, flows, errs) - deform_net(x, srcs, flows, errs)).abs().max() <= 1e-5
    # The offset/modulation predictor gets gradients from the fill.
    deform_net.train()
    out = deform_net(x, srcs, flows, errs)
    out.mean().backward()
    warp = deform_net.blocks[0].keyframe_warp
    assert warp.control[-1].weight.grad.abs().sum() > 0
    assert warp.sample_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["test", "small"])
def test_inference_rewrite_matches(preset):
    from keyprop.core.model import prepare_for_inference

    model = randomize_norms(create_model(preset)).eval()
    fast = prepare_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x, srcs, flows, errs = inputs(2, 128, 136)
    with torch.inference_mode():
        want = model(x, srcs, flows, errs)
        got = fast.fill(x, fast.encode_keyframes(srcs), flows, errs)
    assert (want - got).abs().max().item() <= 1e-4
    # The original keeps its BatchNorms (it is what gets saved and trained).
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
