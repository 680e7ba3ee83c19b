"""ONNX export and the onnxruntime engine on the tiny `test` preset (its k x k deformable warp included).

One export per variant (module fixtures); the paper preset's fixture parity is in
test_export_parity.py.
"""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from keyprop.cli import main
from keyprop.core.model import save_checkpoint
from keyprop.core.runtime import TorchEngine, load_model
from keyprop.export.engine import OnnxEngine, OnnxKeyHandle
from keyprop.export.exporter import ENCODER, FILLER, IR_VERSION, OPSET, ExportOptions, export_graph, file_names

H, W = 64, 96


def randomized_test_model():
    torch.manual_seed(3)
    model = load_model("preset:test")
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def frames(t, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    keys = [rng.random((4, h, w), dtype=np.float32) for _ in range(t)]
    target = rng.random((4, h, w), dtype=np.float32)
    flows = (rng.standard_normal((t, 2, h, w)) * 3).astype(np.float32)
    errs = rng.random((t, 1, h, w), dtype=np.float32)
    return keys, target, flows, errs


@pytest.fixture(scope="module")
def model():
    return randomized_test_model()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "test.pt"
    save_checkpoint(model, path, preset="test")
    return path


@pytest.fixture(scope="module")
def export_dir(model_file, tmp_path_factory):
    """`keyprop export` of the model file at H x W: the CLI, in process."""
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "--model", str(model_file), "--out", str(out), "--size", f"{W}x{H}"]) == 0
    return out


@pytest.fixture(scope="module")
def torch_engine(model):
    return TorchEngine(model, device="cpu")


def test_export_writes_deformconv_dft_and_metadata(export_dir):
    names = file_names((H, W))
    for kind in (ENCODER, FILLER):
        proto = onnx.load(export_dir / names[kind])
        onnx.checker.check_model(proto)
        assert proto.ir_version <= IR_VERSION
        assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
        ops = [n.op_type for n in proto.graph.node]
        assert "DFT" in ops and "GridSample" not in ops
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["graph"] == kind and meta["keyprop_version"] and len(meta["model_hash"]) == 12
        assert (meta["height"], meta["width"]) == (str(H), str(W))
        if kind == FILLER:
            # the test preset: one flow warp and one 3x3 modulated deformable sample, each ONE node
            assert ops.count("DeformConv") == 2
            dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                    for i in proto.graph.input}
            assert dims["flows"] == [1, "T", 2, H, W] and dims["lif0"][1] == "T"


@pytest.mark.parametrize("t", [1, 3])
def test_engine_from_export_folder_matches_torch(export_dir, torch_engine, t):
    """One exported filler serves any number of keyframes (T is dynamic)."""
    engine = OnnxEngine(str(export_dir), device="cpu", threads=2)
    assert engine.name == "onnx" and engine.device == "cpu" and engine.stride == 8
    keys, target, flows, errs = frames(t, seed=t)
    handles = [engine.encode_keyframe(k) for k in keys]
    assert handles[0].size == (H, W)
    got = engine.fill(target, handles, flows, errs)
    want = torch_engine.fill(target, [torch_engine.encode_keyframe(k) for k in keys], flows, errs)
    assert got.shape == (3, H, W) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4


def test_engine_exports_on_demand_into_cache(model, model_file, torch_engine, tmp_path):
    engine = OnnxEngine(str(model_file), device="auto", threads=1, cache_dir=tmp_path)
    assert engine.model_info["hash"] and engine.model_info["preset"] == "test"
    keys, target, flows, errs = frames(2, 56, 72)  # a size not exported before
    got = engine.fill(target, [engine.encode_keyframe(k) for k in keys], flows, errs)
    want = torch_engine.fill(target, [torch_engine.encode_keyframe(k) for k in keys], flows, errs)
    assert np.abs(got - want).max() <= 1e-4
    folder = engine.folder
    assert folder == tmp_path / engine.model_info["hash"] / "fp32-matmulfft"  # CPU: Fourier units as MatMul
    assert sorted(p.name for p in folder.glob("*.onnx")) == sorted(file_names((56, 72)).values())
    # A cache entry from another keyprop version is replaced, not used.
    path = folder / file_names((56, 72))[ENCODER]
    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "keyprop_version":
            prop.value = "0.0.1"
    onnx.save(proto, path)
    again = OnnxEngine(str(model_file), device="cpu", cache_dir=tmp_path)
    assert again.encode_keyframe(keys[0]).size == (56, 72)
    assert {p.key: p.value for p in onnx.load(path).metadata_props}["keyprop_version"] != "0.0.1"


def test_create_engine_onnx(model_file, tmp_path, monkeypatch):
    from keyprop.core.runtime import create_engine

    monkeypatch.setenv("KEYPROP_ONNX_CACHE", str(tmp_path))
    engine = create_engine("onnx", model=str(model_file), device="cpu")
    assert engine.name == "onnx" and engine.stride == 8


def test_bad_models_and_files_are_one_line_value_errors(export_dir, tmp_path):
    with pytest.raises(ValueError, match="not found"):
        OnnxEngine(str(tmp_path / "missing.pt"), device="cpu")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="corrupt.pt"):
        OnnxEngine(str(corrupt), device="cpu")
    folder = tmp_path / "copy"
    folder.mkdir()
    for p in export_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    engine = OnnxEngine(str(folder), device="cpu")
    keys, target, flows, errs = frames(1)
    (folder / file_names((H, W))[ENCODER]).write_bytes(b"garbage")
    with pytest.raises(ValueError) as info:
        engine.encode_keyframe(keys[0])
    assert "not a loadable ONNX file" in str(info.value) and "\n" not in str(info.value)
    # another model's filler under this folder's name
    proto = onnx.load(folder / file_names((H, W))[FILLER])
    for prop in proto.metadata_props:
        if prop.key == "model_hash":
            prop.value = "0123456789ab"
    onnx.save(proto, folder / file_names((H, W))[FILLER])
    fresh = OnnxEngine(str(folder), device="cpu")
    with pytest.raises(ValueError, match="model_hash"):
        fresh.fill(target, [OnnxKeyHandle((H, W), [])], flows, errs)  # checked before anything runs
    with pytest.raises(ValueError, match="no export|not found"):
        engine.encode_keyframe(frames(1, 72, 72)[0][0])
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.encode_keyframe(np.zeros((4, 60, 64), np.float32))
    with pytest.raises(ValueError, match="not a keyprop ONNX export"):
        OnnxEngine(str(tmp_path), device="cpu")


def test_decomposed_deform_conv(model, torch_engine, tmp_path):
    """--decompose-deform: no DeformConv node, GridSample instead, same numbers."""
    options = ExportOptions(decompose_deform=True)
    path = export_graph(model, FILLER, (H, W), tmp_path / "filler.onnx", options)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "DeformConv" not in ops and "GridSample" in ops
    keys, target, flows, errs = frames(2)
    handles = [torch_engine.encode_keyframe(k) for k in keys]
    want = torch_engine.fill(target, handles, flows, errs)
    cache = [t.numpy() for t in _flat(model, handles)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, _feeds(session, target, flows, errs, cache))[0][0]
    assert np.abs(got - want).max() <= 1e-4


def test_fp16_export_error(model, torch_engine, tmp_path):
    """fp16 compute, float32 inputs/outputs; runs on onnxruntime's CPU provider too."""
    engine = OnnxEngine(model, device="cpu", precision="fp16", cache_dir=tmp_path)
    keys, target, flows, errs = frames(2)
    got = engine.fill(target, [engine.encode_keyframe(k) for k in keys], flows, errs)
    want = torch_engine.fill(target, [torch_engine.encode_keyframe(k) for k in keys], flows, errs)
    proto = onnx.load(next(engine.folder.glob(f"{FILLER}*.onnx")))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - want).max() <= 5e-3


def _flat(model, handles):
    from keyprop.core.model import KeyframeCache
    from keyprop.export.graphs import flatten_cache

    return flatten_cache(model, KeyframeCache.cat([h.cache for h in handles]))


def _feeds(session, target, flows, errs, cache):
    names = [i.name for i in session.get_inputs()]
    return dict(zip(names, [target[None], flows[None], errs[None], *cache]))


def test_cli_errors_are_one_line_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "keyprop.cli", "export", "--preset", "test", "--out", str(tmp_path), "--size", "60x64"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "multiples of 8" in result.stderr
    assert main(["export", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert main(["export", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert main(["export", "--preset", "test", "--out", str(tmp_path), "--size", "big"]) == 2


# --- a first hour without friction (issue 18) ----------------------------------------------------

BLOCK_ONNX = ("import sys\n"
              "for name in ('onnx', 'onnxscript'):\n"
              "    sys.modules[name] = None  # as in an environment made without the onnx extra\n"
              "from keyprop.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def test_export_without_the_onnx_extra_says_how_to_get_it(tmp_path):
    cmd = [sys.executable, "-c", BLOCK_ONNX, "export", "--preset", "test", "--out", str(tmp_path), "--size", "64x48"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "install.py --onnx" in lines[0] and "onnx" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_onnx_engine_without_the_onnx_extra_is_one_value_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ValueError, match="install.py --onnx"):
        OnnxEngine("preset:test", device="cpu")


def test_cuda_choice_is_quiet_and_says_why_not(capfd, monkeypatch):
    """Even when the probe session runs (a driver is found), onnxruntime prints nothing.

    Without a GPU, onnxruntime-gpu still lists CUDA; a session asking for it printed a red
    error (the CUDA libraries do not load) before falling back to CPU.
    """
    from keyprop.export import engine

    monkeypatch.setattr(engine, "_nvidia_driver", lambda: True)
    usable, why_not = engine.cuda_status(ort)
    out, err = capfd.readouterr()
    assert out == "" and err == "", err
    assert (usable and why_not == "") or (not usable and why_not)
    monkeypatch.setattr(engine, "_nvidia_driver", lambda: False)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert engine.cuda_status(ort) == (False, "no NVIDIA driver")
    with pytest.raises(ValueError, match="cannot run on CUDA here"):
        OnnxEngine("preset:test", device="cuda")


def test_onnx_run_prints_one_line_saying_which_provider_runs(tmp_path):
    """`keyprop run --backend onnx` on a machine without CUDA: no onnxruntime lines, one line saying CPU."""
    from keyprop.core import io as kio

    rng = np.random.default_rng(0)
    for f in (1, 2):
        kio.write_image(tmp_path / f"plate.{f:04d}.png", rng.random((48, 64, 3)).astype(np.float32),
                        like=kio.ImageFormat(".png", "uint8", 3))
        mask = np.zeros((48, 64), np.float32)
        mask[10:30, 20:40] = 1
        kio.write_image(tmp_path / f"mask.{f:04d}.png", mask, like=kio.ImageFormat(".png", "uint8", 1))
    kio.write_image(tmp_path / "key.0001.png", rng.random((48, 64, 3)).astype(np.float32),
                    like=kio.ImageFormat(".png", "uint8", 3))
    (tmp_path / "out").mkdir()
    env = {**os.environ, "KEYPROP_ONNX_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "keyprop.cli", "run", "--plate", str(tmp_path / "plate.####.png"),
           "--mask", str(tmp_path / "mask.####.png"), "--keys", str(tmp_path / "key.####.png"),
           "--out", str(tmp_path / "out/fill.####.png"), "--model", "preset:test", "--backend", "onnx",
           "--progress", "none", "--threads", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" not in result.stderr.replace("on onnxruntime", ""), result.stderr
    said = [line for line in result.stderr.splitlines() if " on onnxruntime " in line]
    assert len(said) == 1, result.stderr
    usable, why_not = __import__("keyprop.export.engine", fromlist=["cuda_status"]).cuda_status(ort)
    assert ("on onnxruntime CUDA" if usable else f"on onnxruntime CPU ({why_not})") in said[0]
