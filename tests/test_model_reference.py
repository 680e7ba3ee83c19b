"""Paper preset == the authors' generator: parity fixtures, key mapping, their checkpoints."""
import sys
import types

import pytest
import torch

from conftest import PARITY_CASES, load_parity_case, reference_state_dict
from keyprop.core.model import (KeyPropNet, NetConfig, from_reference_key, get_config, load_authors_checkpoint,
                                load_reference, read_lightning_checkpoint, state_dict_from_reference,
                                state_dict_to_reference, to_reference_key)
from keyprop.core.model.presets import PAPER_REFERENCE_CONFIG


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_with_published_generator(case):
    meta, arrays = load_parity_case(case)
    model = load_reference(meta["config"], reference_state_dict(meta["state_dict"]))
    with torch.inference_mode():
        out, logits = model(arrays["input"], arrays["srcs"], arrays["flows"], arrays["flow_errs"],
                            return_logits=True)
    assert (out - arrays["output"]).abs().max().item() <= 1e-4
    assert (logits - arrays["logits"]).abs().max().item() <= 1e-3


def test_parity_through_cache_and_keyword_call():
    meta, arrays = load_parity_case(PARITY_CASES[0])
    model = load_reference(meta["config"], reference_state_dict(meta["state_dict"]))
    with torch.inference_mode():
        cache = model.encode_keyframes(arrays["srcs"])
        out = model.fill(arrays["input"], cache, flows=arrays["flows"], flow_errs=arrays["flow_errs"])
        kw = model(input=arrays["input"], srcs=arrays["srcs"], flows=arrays["flows"], flow_errs=arrays["flow_errs"])
    assert (out - arrays["output"]).abs().max().item() <= 1e-4
    assert (kw - arrays["output"]).abs().max().item() <= 1e-4


def test_fixture_keys_map_one_to_one():
    meta, _ = load_parity_case(PARITY_CASES[0])
    cfg = NetConfig.from_reference(meta["config"])
    theirs = [k for k, _, _ in meta["state_dict"]]
    ours = KeyPropNet(cfg).state_dict()
    assert sorted(to_reference_key(k, cfg) for k in ours) == sorted(theirs)
    for key in theirs:
        assert to_reference_key(from_reference_key(key, cfg), cfg) == key
    # Readable names of our own: no `model.N` containers.
    assert not any(k.startswith("model.") for k in ours)


REFERENCE_VARIANTS = [
    dict(n_blocks=2, n_cross=1),
    dict(n_blocks=5, n_cross=3, is_crossattending=False),
    dict(n_blocks=3, n_cross=1000, is_deformable=False),
    dict(n_blocks=2, pre_lama=1, post_lama=2, resnet_conv_kwargs=dict(ratio_gin=0.5, ratio_gout=0.5,
                                                                      enable_lfu=True)),
    dict(n_blocks=2, block_type="conv", num_groups=4, add_out_act=True),
    dict(n_blocks=1, n_downsampling=2, ngf=128, num_latents_sqrt=8, read_write_heads=4),
]


@pytest.mark.parametrize("variant", REFERENCE_VARIANTS)
def test_other_generator_configs_round_trip(variant):
    config = {**PAPER_REFERENCE_CONFIG, **variant}
    cfg = NetConfig.from_reference(config)
    model = KeyPropNet(cfg)
    theirs = state_dict_to_reference(model.state_dict(), cfg)
    assert all(not k.startswith(("blocks.", "encoder.", "decoder.")) for k in theirs)
    loaded = load_reference(config, theirs)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert cfg.to_reference()["n_blocks"] == config["n_blocks"]
    assert NetConfig.from_reference(cfg.to_reference()) == cfg


def test_non_square_and_up_to_four_sources_run():
    cfg = NetConfig.from_reference({**PAPER_REFERENCE_CONFIG, "n_blocks": 2, "n_cross": 2})
    model = KeyPropNet(cfg).eval()
    for t, (h, w) in [(1, (136, 200)), (4, (128, 128))]:
        with torch.inference_mode():
            out = model(torch.rand(1, 4, h, w), torch.rand(1, t, 4, h, w), torch.randn(1, t, 2, h, w),
                        torch.rand(1, t, 1, h, w))
        assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()


def test_missing_and_misshapen_keys_are_named():
    meta, _ = load_parity_case(PARITY_CASES[0])
    sd = reference_state_dict(meta["state_dict"])
    del sd["model.1.conv.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_reference(meta["config"], sd)
    sd = reference_state_dict(meta["state_dict"])
    sd["model.20.bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match="decoder.to_rgb.bias"):
        load_reference(meta["config"], sd)


def test_unknown_generator_argument_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        NetConfig.from_reference({**PAPER_REFERENCE_CONFIG, "time_embed_dim": 32})


def _install_fake_omegaconf():
    """A stand-in for OmegaConf's classes, importable only while the checkpoint is written."""
    mod = types.ModuleType("omegaconf_fake_for_test")

    class DictConfig:
        def __init__(self, content):
            self.__dict__["_content"] = content
            self.__dict__["_metadata"] = {"flags": None}

        def __getstate__(self):
            return dict(self.__dict__)

        def __setstate__(self, state):
            self.__dict__.update(state)

    class AnyNode:
        def __init__(self, val):
            self._val = val

    for cls in (DictConfig, AnyNode):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    sys.modules[mod.__name__] = mod
    return mod


def test_lightning_checkpoint_loads_from_file(tmp_path):
    meta, arrays = load_parity_case(PARITY_CASES[0])
    weights = reference_state_dict(meta["state_dict"])
    fake = _install_fake_omegaconf()
    try:
        node = fake.AnyNode
        generator = {k: node(v) for k, v in meta["config"].items() if k != "resnet_conv_kwargs"}
        generator["kind"] = node("gi.modules.gi.lama_guided.GIResNetGenerator")
        generator["resnet_conv_kwargs"] = fake.DictConfig({
            "ratio_gin": node(0.75),
            "ratio_gout": node("${model.params.config.generator.resnet_conv_kwargs.ratio_gin}"),
            "enable_lfu": node(False)})
        hyper = fake.DictConfig({"config": fake.DictConfig({"generator": fake.DictConfig(generator)})})
        state = {f"generator.{k}": v for k, v in weights.items()}
        state["discriminator.model0.0.ffc.convl2l.weight"] = torch.randn(4, 3, 3, 3)
        state["flow.raft.fnet.conv1.weight"] = torch.randn(8, 3, 7, 7)
        torch.save({"epoch": 3, "global_step": 1000, "state_dict": state, "hyper_parameters": hyper,
                    "optimizer_states": []}, tmp_path / "last.ckpt")
    finally:
        del sys.modules[fake.__name__]
    with pytest.raises(Exception):  # the plain safe loader refuses the foreign classes
        torch.load(tmp_path / "last.ckpt", weights_only=True)
    generator_sd, config = read_lightning_checkpoint(tmp_path / "last.ckpt")
    assert set(generator_sd) == set(weights)
    assert config["n_blocks"] == 3 and config["resnet_conv_kwargs"]["ratio_gout"] == 0.75
    model = load_authors_checkpoint(tmp_path / "last.ckpt")
    assert model.provenance.origin == "authors-checkpoint"
    with torch.inference_mode():
        out = model(arrays["input"], arrays["srcs"], arrays["flows"], arrays["flow_errs"])
    assert (out - arrays["output"]).abs().max().item() <= 1e-4


def test_plain_lightning_checkpoint_with_weights_only(tmp_path):
    meta, _ = load_parity_case(PARITY_CASES[0])
    weights = reference_state_dict(meta["state_dict"])
    torch.save({"state_dict": {f"generator.{k}": v for k, v in weights.items()}}, tmp_path / "plain.ckpt")
    model = load_authors_checkpoint(tmp_path / "plain.ckpt", config=meta["config"])
    sd = state_dict_from_reference({f"generator.{k}": v for k, v in weights.items()}, model.cfg)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_paper_preset_is_the_reference_config():
    assert get_config("paper") == NetConfig.from_reference(PAPER_REFERENCE_CONFIG)
    assert get_config("paper").warp_kernel == 1


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_of_inference_rewrite(case):
    from keyprop.core.model import prepare_for_inference

    meta, arrays = load_parity_case(case)
    model = prepare_for_inference(load_reference(meta["config"], reference_state_dict(meta["state_dict"])))
    with torch.inference_mode():
        cache = model.encode_keyframes(arrays["srcs"])
        out, logits = model.fill(arrays["input"], cache, arrays["flows"], arrays["flow_errs"], return_logits=True)
    assert (out - arrays["output"]).abs().max().item() <= 1e-4
    assert (logits - arrays["logits"]).abs().max().item() <= 1e-3
