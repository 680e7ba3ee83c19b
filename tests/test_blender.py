"""The Blender extension against the real bpy wheel (Blender 5.0 as a Python module, headless).

Each Blender session is a subprocess (a fresh Blender, as an artist's would be); keyprop's
side runs in this process or as the CLI. Nothing here skips: if bpy cannot import, these
tests fail, so CI notices.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from keyprop.core import io
from keyprop.core.model import create_model, save_checkpoint
from keyprop.core.shot import expand as core_expand

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugin" / "blender"
PY = sys.executable
H, W, N = 48, 64, 5


def _load(name):
    """A plain-Python module of the extension, without importing the package (which needs bpy)."""
    spec = importlib.util.spec_from_file_location(f"kp_blender_{name}", PLUGIN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def blender(script: str, tmp: Path, *args, env=None, check=True, timeout=240) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh headless Blender (bpy) with its own user folders under ``tmp``."""
    path = tmp / f"script_{abs(hash(script))}.py"
    path.write_text(textwrap.dedent(script))
    full_env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp / "blender_user"), "PYTHONUNBUFFERED": "1",
                **(env or {})}
    proc = subprocess.run([PY, str(path), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"blender script failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-3000:]}"
    return proc


def last_json(proc) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """A tiny linear EXR-half shot: a red box moving over texture; clean keyframes at 1 and N."""
    d = tmp_path_factory.mktemp("blender_shot")
    (d / "shot").mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((H, W * 2, 3)) ** 2.2).astype(np.float32)
    half = io.ImageFormat(".exr", "float16", 3, 3)
    for f in range(1, N + 1):
        plate = base[:, 2 * f:2 * f + W].copy()
        clean = plate.copy()
        plate[16:32, 20 + f:36 + f] = [1.0, 0.2, 0.1]
        mask = np.zeros((H, W, 1), np.float32)
        mask[14:34, 18 + f:38 + f] = 1
        io.write_image(d / f"shot/plate.{f:04d}.exr", plate, like=half)
        io.write_image(d / f"shot/mask.{f:04d}.png", mask, like=io.ImageFormat(".png", "uint8", 1))
        if f in (1, N):
            io.write_image(d / f"shot/keys.{f:04d}.exr", clean, like=half)
    torch.manual_seed(0)  # weights fixed in a file: every process fills with the same tiny model
    save_checkpoint(create_model("test"), d / "test.pt")
    return d


@pytest.fixture(scope="module")
def cli_fill(shot):
    out = shot / "cli"
    out.mkdir()
    proc = subprocess.run([PY, "-m", "keyprop.cli", "run", "--plate", shot / "shot/plate.####.exr",
                           "--mask", shot / "shot/mask.####.png", "--keys", shot / "shot/keys.####.exr",
                           "--out", out / "fill.####.exr", "--model", shot / "test.pt", "--progress", "none"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out / "fill.####.exr"


def test_patterns_match_core():
    patterns = _load("patterns")
    for pattern in ("a/plate.####.exr", "a/plate.%04d.exr", "plate.%d.png", "p_##.tif"):
        for frame in (0, 7, 1001, 123456):
            assert patterns.expand(pattern, frame) == core_expand(pattern, frame)
    assert patterns.pattern_from_file("/x/plate.1001.exr") == "/x/plate.####.exr"
    assert patterns.pattern_from_file("/x/v2/shot_v3.0012.png") == "/x/v2/shot_v3.####.png"


def test_job_spec_mirrors_cli_flags():
    from keyprop.core import run_cli
    from keyprop.core.api import Settings
    import argparse

    jobs = _load("jobs")
    spec = jobs.JobSpec("p.####.exr", "m.####.png", "k.####.exr", "o.####.exr", 3, 9, model="preset:test",
                        dilate=2, feather=1.5, max_keys=1, work_res=320, threads=2, overwrite=True)
    parser = argparse.ArgumentParser()
    run_cli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *spec.cli_args()])
    values = run_cli._job_values(args)
    settings, shot, run = run_cli._settings_and_shot(values)
    assert settings == Settings.from_mapping(spec.settings_mapping())
    assert (shot.first, shot.last, shot.plate, shot.out) == (3, 9, "p.####.exr", "o.####.exr")
    assert run["overwrite"] and not run.get("resume")


@pytest.mark.parametrize("mode", ["in_process", "worker"])
def test_job_errors_are_one_line(tmp_path, mode):
    jobs = _load("jobs")
    spec = jobs.JobSpec(str(tmp_path / "none.####.exr"), str(tmp_path / "m.####.png"),
                        str(tmp_path / "k.####.exr"), str(tmp_path / "o.####.exr"))
    job = jobs.start(spec, mode, PY)
    assert job.wait() == "error"
    assert job.message.startswith("keyprop: ") and "\n" not in job.message
    assert "no plate frames found" in job.message


VALIDATE = Path(importlib.util.find_spec("bpy").origin).parent / \
    "5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py" if importlib.util.find_spec("bpy") else None


def test_manifest_validates():
    assert VALIDATE is not None and VALIDATE.is_file(), "bpy (Blender 5.0.1) is not installed: pip install bpy==5.0.1"
    proc = subprocess.run([PY, str(VALIDATE), "validate", str(PLUGIN)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = (PLUGIN / "blender_manifest.toml").read_text()
    assert 'blender_version_min = "4.2.0"' in manifest and "[permissions]" in manifest
    assert "wheels" not in manifest.split("# No wheels")[0]


ENABLE = """
import bpy, os, sys
repo_dir, plugin = sys.argv[1], sys.argv[2]
os.makedirs(repo_dir, exist_ok=True)
link = os.path.join(repo_dir, "keyprop")
if not os.path.exists(link):
    os.symlink(plugin, link)
bpy.context.preferences.extensions.repos.new(name="keyprop dev", module="keyprop_dev",
                                             custom_directory=repo_dir, source="USER")
module = "bl_ext.keyprop_dev.keyprop"
bpy.ops.preferences.addon_enable(module=module)
assert module in bpy.context.preferences.addons, "not enabled"
assert hasattr(bpy.types, "KEYPROP_PT_main") and hasattr(bpy.types.Scene, "keyprop")
assert bpy.ops.keyprop.propagate.poll()
prefs = bpy.context.preferences.addons[module].preferences
assert prefs.mode == "AUTO", prefs.mode
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("keyprop.core"))
assert not heavy, f"the extension imported {heavy}"
bpy.ops.preferences.addon_disable(module=module)
assert not hasattr(bpy.types, "KEYPROP_PT_main") and not hasattr(bpy.types.Scene, "keyprop")

# The same package as a plain module (keyprop.plugin.blender), registered by hand.
import keyprop.plugin.blender as plain
plain.register()
assert hasattr(bpy.types, "KEYPROP_OT_propagate")
plain.unregister()
plain.register()  # twice: unregister left nothing behind
plain.unregister()
assert not hasattr(bpy.types, "KEYPROP_OT_propagate")
print("RESULT {}")
"""


def test_extension_enables_and_disables(tmp_path):
    blender(ENABLE, tmp_path, tmp_path / "repo", PLUGIN)


LEGACY = """
import bpy, sys
bpy.ops.preferences.addon_install(filepath=sys.argv[1], overwrite=True)
bpy.ops.preferences.addon_enable(module="keyprop_blender")
import keyprop_blender
assert keyprop_blender.bl_info["blender"] >= (4, 2, 0)
assert hasattr(bpy.types, "KEYPROP_PT_main")
assert keyprop_blender.jobs.read_config()["python"] == sys.argv[2]
bpy.ops.preferences.addon_disable(module="keyprop_blender")
assert not hasattr(bpy.types, "KEYPROP_PT_main")
print("RESULT {}")
"""


def test_legacy_addon_zip_installs(tmp_path):
    packaging = _load("packaging")
    package = packaging.build_legacy_zip(tmp_path / "keyprop_blender.zip", python="/env/bin/python")
    blender(LEGACY, tmp_path, package, "/env/bin/python")


FAKE_BLENDER = """#!/bin/sh
# Stands in for the `blender` binary: Blender as a Python module, for --version and --python-expr.
exec {py} - "$@" <<'PY'
import sys
args = sys.argv[1:]
import bpy
if "--version" in args:
    print("Blender", bpy.app.version_string)
    sys.exit(0)
exec(args[args.index("--python-expr") + 1])
PY
"""

CHECK_INSTALLED = """
import bpy, sys
bpy.ops.wm.read_userpref()
assert "bl_ext.user_default.keyprop" in bpy.context.preferences.addons, [a.module for a in bpy.context.preferences.addons]
mod = sys.modules["bl_ext.user_default.keyprop"]
print("RESULT", __import__("json").dumps({"command": mod.jobs.worker_command()}))
"""


def test_install_py_blender(tmp_path):
    exe = tmp_path / "blender"
    exe.write_text(FAKE_BLENDER.format(py=PY))
    exe.chmod(0o755)
    spec = importlib.util.spec_from_file_location("keyprop_install", ROOT / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    args = install.parse_args(["--blender", "--blender-exe", str(exe)])
    assert args.blender and args.blender_exe == str(exe)
    env = {"BLENDER_USER_RESOURCES": str(tmp_path / "blender_user")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert install.install_blender(str(exe), Path("/opt/keyprop-env/bin/python")) == 0
        again = install.install_blender(str(exe), Path(PY))  # an update replaces it
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert again == 0
    config = json.loads((tmp_path / "blender_user/extensions/user_default/keyprop/keyprop_env.json").read_text())
    assert config["python"] == PY
    assert last_json(blender(CHECK_INSTALLED, tmp_path))["command"] == [PY, "-m", "keyprop.cli"]
    assert install.install_blender(str(tmp_path / "missing"), Path(PY)) == 2


OPERATOR = """
import bpy, json, sys
import keyprop.plugin.blender as addon
shot, blend = sys.argv[1], sys.argv[2]
addon.register()
bpy.ops.wm.save_as_mainfile(filepath=blend)
for mode in ("IN_PROCESS", "WORKER"):
    result = bpy.ops.keyprop.propagate(
        plate=shot + "/shot/plate.####.exr", mask=shot + "/shot/mask.####.png", keys=shot + "/shot/keys.####.exr",
        out=shot + f"/{mode}/fill.####.exr", model=shot + "/test.pt", mode=mode, threads=1)
    assert result == {"FINISHED"}, result
scene = bpy.context.scene
tree = scene.compositing_node_group
groups = [n for n in tree.nodes if n.bl_idname == "CompositorNodeGroup"]
inner = groups[-1].node_tree
image_node = next(n for n in inner.nodes if n.bl_idname == "CompositorNodeImage")
info = {"groups": len(groups), "inputs": [s.name for s in groups[-1].inputs],
        "outputs": [s.name for s in groups[-1].outputs], "image": image_node.image.filepath,
        "colorspace": image_node.image.colorspace_settings.name, "linked": groups[0].outputs[0].is_linked}
addon.unregister()
bpy.ops.wm.save_mainfile()
print("RESULT", json.dumps(info))
"""


@pytest.fixture(scope="module")
def operator_run(shot, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blender_op")
    proc = blender(OPERATOR, tmp, shot, tmp / "scene.blend")
    return last_json(proc), tmp / "scene.blend"


@pytest.mark.parametrize("mode", ["IN_PROCESS", "WORKER"])
def test_operator_fill_equals_cli(shot, cli_fill, operator_run, mode):
    for frame in range(1, N + 1):
        cli = io.read_image(core_expand(cli_fill, frame))
        ours = io.read_image(shot / mode / f"fill.{frame:04d}.exr")
        assert ours.format == cli.format and ours.format.dtype == "float16"
        assert np.array_equal(ours.pixels, cli.pixels), f"frame {frame} differs from the CLI's ({mode})"


def test_operator_adds_a_plain_node_group(operator_run):
    info, _ = operator_run
    assert info["inputs"] == ["Plate", "Mask"] and info["outputs"] == ["Image"]
    assert info["image"].startswith("//") and info["image"].endswith("fill.0001.exr")  # relative: portable
    assert info["colorspace"] == "Linear Rec.709" and info["linked"]


RENDER = """
import bpy, json, sys
blend, out = sys.argv[1], sys.argv[2]
bpy.ops.wm.open_mainfile(filepath=blend, load_ui=False)
assert not any("keyprop" in a.module for a in bpy.context.preferences.addons)
assert not hasattr(bpy.types, "KEYPROP_PT_main")
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
settings = scene.render.image_settings
settings.file_format, settings.color_depth, settings.color_mode = "OPEN_EXR", "32", "RGB"
for frame in (2, 4):
    scene.frame_set(frame)
    scene.render.filepath = out % frame
    bpy.ops.render.render(write_still=True)
print("RESULT {}")
"""


def test_compositor_group_renders_without_the_addon(shot, cli_fill, operator_run, tmp_path):
    _, blend = operator_run
    blender(RENDER, tmp_path, blend, str(tmp_path / "render.%04d.exr"))
    for frame in (2, 4):
        rendered = io.read_image(tmp_path / f"render.{frame:04d}.exr").pixels
        expected = io.read_image(core_expand(cli_fill, frame)).pixels
        assert rendered.shape == expected.shape
        np.testing.assert_allclose(rendered, expected, rtol=0, atol=1e-6)


MASK = """
import bpy, json, sys
import keyprop.plugin.blender as addon
from keyprop.plugin.blender import sources
shot, out = sys.argv[1], sys.argv[2]
addon.register()
bpy.context.preferences.edit.keyframe_new_interpolation_type = "CONSTANT"
mask = bpy.data.masks.new("wire")
for name, x0, x1, shown in (("left", 0.25, 0.4, (1, 2)), ("right", 0.6, 0.75, (3, 4, 5))):
    layer = mask.layers.new(name=name)
    spline = layer.splines.new()
    spline.points.add(3)
    for point, (x, y) in zip(spline.points, ((x0, 0.4), (x1, 0.4), (x1, 0.6), (x0, 0.6))):
        point.co, point.handle_type = (x, y), "VECTOR"
    spline.use_cyclic = True
    for frame in range(1, 6):
        layer.alpha = 1.0 if frame in shown else 0.0
        layer.keyframe_insert("alpha", frame=frame)
sources.rasterize_mask(mask, (1, 5), (64, 48), out + "/mask.####.exr")
# A Movie Clip plate goes through the compositor into linear EXR half.
clip = bpy.data.movieclips.load(shot + "/shot/plate.0001.exr")
sources.render_frames(range(1, 6), tuple(clip.size), out + "/plate.####.exr", sources._clip_node(clip), "16",
                      "RGB", "Linear Rec.709")
addon.unregister()
print("RESULT {}")
"""


def test_mask_datablock_rasterizes_per_frame(shot, tmp_path):
    blender(MASK, tmp_path, shot, tmp_path)
    for frame in range(1, 6):
        mask = io.read_mask(tmp_path / f"mask.{frame:04d}.exr")
        assert mask.shape == (H, W)
        ys, xs = np.nonzero(mask > 0.5)
        assert len(xs) > 20, f"frame {frame}: empty mask"
        side = "left" if xs.mean() < W / 2 else "right"
        assert side == ("left" if frame <= 2 else "right"), f"frame {frame}: the {side} layer rendered"
        assert (np.isclose(mask, 0, atol=1e-6) | np.isclose(mask, 1, atol=1e-6)).mean() > 0.9  # data, not colour
    for frame in range(1, 6):  # the clip's pixels, unchanged, as EXR half
        ours = io.read_image(tmp_path / f"plate.{frame:04d}.exr")
        plate = io.read_image(shot / f"shot/plate.{frame:04d}.exr")
        assert ours.format.dtype == "float16"
        np.testing.assert_array_equal(ours.pixels, plate.pixels)


CANCEL = """
import bpy, json, sys
import keyprop.plugin.blender as addon
shot, out, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
addon.register()
bpy.context.preferences.edit.keyframe_new_interpolation_type = "CONSTANT"
mask = bpy.data.masks.new("box")
spline = mask.layers.new().splines.new()
spline.points.add(3)
for point, co in zip(spline.points, ((0.3, 0.3), (0.5, 0.3), (0.5, 0.5), (0.3, 0.5))):
    point.co, point.handle_type = co, "VECTOR"
spline.use_cyclic = True
bpy.data.movieclips.load(shot + "/shot/plate.0001.exr").name = "plate"
result = bpy.ops.keyprop.propagate(plate_clip="plate", mask_datablock="box", key_frames="1", out=out,
                                   frame_start=1, frame_end=frames, model=shot + "/test.pt", mode="WORKER",
                                   threads=1)
print("RESULT", json.dumps({"result": sorted(result)}))
"""


def test_cancel_keeps_whole_frames(shot, tmp_path):
    """Ctrl-C in headless Blender stops after the current frame, leaving only whole frames."""
    frames = 5
    out = tmp_path / "out" / "fill.####.exr"
    path = tmp_path / "cancel.py"
    path.write_text(textwrap.dedent(CANCEL))
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender_user"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PY, str(path), str(shot), str(out), str(frames)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    first = Path(core_expand(out, 1))
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "the keyframe was never written"
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert json.loads(text.split("RESULT ")[-1])["result"] == ["CANCELLED"], text
    assert "stopped after" in text
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("fill."))
    assert 1 <= len(written) < frames, written
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left"
    plate_dir = tmp_path / "out" / "plate"
    for name in written:  # whole frames: each decodes, at the plate's size, as EXR half
        image = io.read_image(tmp_path / "out" / name)
        assert image.size == (H, W) and image.format.dtype == "float16"
    assert len(list(plate_dir.iterdir())) == frames and len(list((tmp_path / "out/mask").iterdir())) == frames
