"""The Blender extension against the real bpy wheels (Blender as a Python module, headless).

Each Blender session is a subprocess (a fresh Blender, as an artist's would be); keyprop's
side runs in this process or as the CLI. Nothing here skips: if bpy cannot import, these
tests fail, so CI notices. The Blender is whichever bpy this Python has: the dev environment
holds 5.0.1, and ``tools/blender_envs.py test 4.2 4.5`` runs this file in an environment per
Blender line (4.2 LTS, 4.5 LTS, 5.0), which is what CI does.

Every child process runs under a wall-clock limit that kills its whole process group, and
every Blender script leaves nothing registered at exit: bpy 4.2 segfaults and 4.5 hangs
when an Operator or Panel class is still registered as the interpreter ends.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
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


def _bpy_dir():
    spec = importlib.util.find_spec("bpy")
    return Path(spec.origin).parent if spec and spec.origin else None


def blender_line():
    """The bpy wheel's Blender line ("4.2", "5.0"), from its scripts folder (no Blender started)."""
    folder = _bpy_dir()
    found = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+\.\d+", p.name)) if folder else []
    assert len(found) == 1, f"bpy is not installed in {PY} (or holds several versions: {found})"
    return found[0]


def _load(name):
    """A plain-Python module of the extension, without importing the package (which needs bpy)."""
    spec = importlib.util.spec_from_file_location(f"kp_blender_{name}", PLUGIN / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_child(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout kills the child's whole process group (Blender, its workers)."""
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} ran past {timeout} s and was killed:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# Prepended to every Blender script: whatever the script leaves registered (a failed assert
# skips its unregister) is unregistered before bpy's own exit handler runs (atexit runs the
# last registered first), so a failing script fails instead of segfaulting (4.2) or hanging (4.5).
PRELUDE = """\
import atexit as _atexit, sys as _sys
import bpy as _bpy


def _keyprop_unregister_at_exit():
    import addon_utils
    for _name in [a.module for a in _bpy.context.preferences.addons if "keyprop" in a.module]:
        try:
            addon_utils.disable(_name)
        except Exception as _exc:
            print("keyprop test: could not disable", _name, _exc)
    _plain = _sys.modules.get("keyprop.plugin.blender")
    if _plain is not None and hasattr(_bpy.types, "KEYPROP_OT_propagate"):
        _plain.unregister()


_atexit.register(_keyprop_unregister_at_exit)
"""


def blender(script: str, tmp: Path, *args, env=None, check=True, timeout=240) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh headless Blender (bpy) with its own user folders under ``tmp``."""
    path = tmp / f"script_{abs(hash(script))}.py"
    path.write_text(PRELUDE + textwrap.dedent(script))
    full_env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp / "blender_user"), "PYTHONUNBUFFERED": "1",
                **(env or {})}
    proc = run_child([PY, path, *args], timeout, env=full_env)
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
    proc = run_child([PY, "-m", "keyprop.cli", "run", "--plate", shot / "shot/plate.####.exr",
                      "--mask", shot / "shot/mask.####.png", "--keys", shot / "shot/keys.####.exr",
                      "--out", out / "fill.####.exr", "--model", shot / "test.pt", "--progress", "none"], 300)
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


@pytest.mark.parametrize("mode", ["in_process", "worker"])
def test_job_reports_the_setup_then_every_frame(tmp_path, mode):
    """Either way a job reports the run's setup first (its seconds, the first frame it fills),
    then each frame, and ends done."""
    from test_pipeline import write_shot

    jobs = _load("jobs")
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    spec = jobs.JobSpec(shot.plate, shot.mask, shot.keys, shot.out, 101, 104, model="preset:test", overwrite=True)
    job = jobs.start(spec, mode, PY)
    seen = []
    assert job.wait(on_event=seen.append) == "done", job.message
    assert seen[0]["event"] == "setup" and seen[0]["total"] == 4 and seen[0]["frame"] == 102
    assert seen[0]["seconds"] > 0
    assert [e["frame"] for e in seen if e["event"] == "frame"] == [101, 102, 103, 104] and job.done == 4


def test_manifest_validates():
    """Blender's own extension validator (the one `blender --command extension validate` runs)."""
    validate = _bpy_dir() / blender_line() / "scripts/addons_core/bl_pkg/cli/blender_ext.py"
    assert validate.is_file(), f"no extension validator in this bpy: {validate}"
    proc = run_child([PY, validate, "validate", PLUGIN], 120)
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
# A real Blender exits cleanly with the extension enabled; bpy 4.2/4.5 as a module does not
# (segfault / hang), so the stand-in disables what is enabled before it ends, as Blender would.
exec {py} - "$@" <<'PY'
import sys
args = sys.argv[1:]
import bpy
if "--version" in args:
    print("Blender", bpy.app.version_string)
    sys.exit(0)
try:
    exec(args[args.index("--python-expr") + 1])
finally:
    import addon_utils
    for name in [a.module for a in bpy.context.preferences.addons if "keyprop" in a.module]:
        addon_utils.disable(name)
PY
"""

# A fresh Blender finds the installed extension where install.py put it. The saved preferences
# are read back where bpy can: `wm.read_userpref` segfaults in bpy 4.2.23 (whatever is
# installed), so there the test looks for the add-on's name in userpref.blend instead.
CHECK_INSTALLED = """
import bpy, json, sys
module = "bl_ext.user_default.keyprop"
if bpy.app.version[:2] != (4, 2):
    bpy.ops.wm.read_userpref()
    assert module in bpy.context.preferences.addons, [a.module for a in bpy.context.preferences.addons]
else:
    bpy.ops.preferences.addon_enable(module=module)
mod = sys.modules[module]
print("RESULT", json.dumps({"command": mod.jobs.worker_command()}))
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
    assert b"bl_ext.user_default.keyprop" in (tmp_path / "blender_user/config/userpref.blend").read_bytes(), \
        "the saved preferences do not enable the extension"
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
from keyprop.plugin.blender import compat
scene = bpy.context.scene
tree = compat.compositor_tree(scene, create=False)
groups = [n for n in tree.nodes if n.bl_idname == "CompositorNodeGroup"]
inner = groups[-1].node_tree
image_node = next(n for n in inner.nodes if n.bl_idname == "CompositorNodeImage")
try:  # a keyframe pattern that matches nothing is a mistake, as for `keyprop run --keys`
    bpy.ops.keyprop.propagate(plate=shot + "/shot/plate.####.exr", mask=shot + "/shot/mask.####.png",
                              keys=shot + "/shot/clean.####.exr", out=shot + "/NOKEYS/fill.####.exr",
                              model=shot + "/test.pt", mode="IN_PROCESS", threads=1)
    bad_keys = ""
except RuntimeError as exc:
    bad_keys = str(exc)
output = compat.output_socket(tree)
info = {"bad_keys": bad_keys, "groups": len(groups), "inputs": [s.name for s in groups[-1].inputs],
        "outputs": [s.name for s in groups[-1].outputs], "image": image_node.image.filepath,
        "colorspace": image_node.image.colorspace_settings.name, "linked": groups[0].outputs[0].is_linked,
        "nodes": sorted(n.bl_idname for n in tree.nodes), "output_from": output.links[0].from_node.name,
        "chain": [(l.from_node.name, l.to_node.name, l.to_socket.name) for l in tree.links]}
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


def test_operator_refuses_a_keyframe_pattern_matching_nothing(operator_run):
    info, _ = operator_run
    assert "no keyframe file matches" in info["bad_keys"] and "clean.####.exr" in info["bad_keys"]


def test_fresh_compositor_holds_the_fill_at_its_output(operator_run):
    """A scene without a compositor: the one keyprop makes feeds the output from the fill alone.

    On 4.x, switching compositing nodes on makes Blender wire Render Layers to the Composite
    (4.5 also adds a Reroute and a Viewer); keyprop drops those, so the output is the fill's
    and no 3D render runs under it. The second run (WORKER) goes between the first and the output.
    """
    info, _ = operator_run
    output = "Composite" if "CompositorNodeComposite" in info["nodes"] else "Group Output"
    assert info["nodes"] == sorted(["CompositorNodeGroup", "CompositorNodeGroup",
                                    "CompositorNodeComposite" if output == "Composite" else "NodeGroupOutput"])
    first, second = "keyprop fill", "keyprop fill.001"
    assert sorted(info["chain"]) == sorted([[first, second, "Plate"], [second, output, "Image"]]), info["chain"]


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


USER_COMPOSITOR = """
import bpy, json, sys
import keyprop.plugin.blender as addon
from keyprop.plugin.blender import compat, compositor
from keyprop.plugin.blender.sources import Source
shot, tmp = sys.argv[1], sys.argv[2]
addon.register()
bpy.ops.wm.save_as_mainfile(filepath=tmp + "/user.blend")


def users_compositor(scene):
    # As the artist left it: 4.x "Use Nodes" ticked (Blender wires Render Layers to the Composite,
    # 4.5 through a Reroute that also feeds a Viewer); 5.0 a new compositing group, Render Layers
    # to its Group Output.
    if compat.has_node_group_compositor():
        tree = bpy.data.node_groups.new(scene.name + " comp", "CompositorNodeTree")
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        out = tree.nodes.new("NodeGroupOutput")
        scene.compositing_node_group = tree
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        tree.links.new(layers.outputs["Image"], out.inputs[0])
        return tree
    scene.use_nodes = True
    return scene.node_tree


def wiring(tree):
    return sorted([l.from_node.name, l.from_socket.name, l.to_node.name, l.to_socket.name] for l in tree.links)


def describe(tree):
    return {"nodes": sorted(n.name for n in tree.nodes), "links": wiring(tree),
            "output": compat.output_socket(tree).node.name}


# A: a plate comp: the plate's Image node through a grade (+1 stop) to the output, and to a Viewer.
# Render Layers would render the 3D scene under every frame: a plate comp has none.
scene = bpy.context.scene
tree = users_compositor(scene)
for node in [n for n in tree.nodes if n.bl_idname not in ("CompositorNodeComposite", "NodeGroupOutput")]:
    tree.nodes.remove(node)
plate = bpy.data.images.load(shot + "/shot/plate.0001.exr")
plate.name, plate.source = "plate", "SEQUENCE"
read = tree.nodes.new("CompositorNodeImage")
read.name, read.image = "plate read", plate
read.frame_duration, read.frame_start, read.frame_offset = 5, 1, 0
grade = tree.nodes.new("CompositorNodeExposure")
grade.name = "grade"
grade.inputs["Exposure"].default_value = 1.0
viewer = tree.nodes.new("CompositorNodeViewer")
viewer.name = "viewer"
tree.links.new(read.outputs["Image"], grade.inputs["Image"])
tree.links.new(grade.outputs["Image"], compat.output_socket(tree))
tree.links.new(read.outputs["Image"], viewer.inputs["Image"])
before = describe(tree)
result = bpy.ops.keyprop.propagate(plate_image="plate", mask=shot + "/shot/mask.####.png",
                                   keys=shot + "/shot/keys.####.exr", out=tmp + "/fill/fill.####.exr",
                                   model=shot + "/test.pt", mode="IN_PROCESS", threads=1)
assert result == {"FINISHED"}, result
after = describe(tree)
again = bpy.ops.keyprop.propagate(plate_image="plate", mask=shot + "/shot/mask.####.png",
                                  keys=shot + "/shot/keys.####.exr", out=tmp + "/fill/fill.####.exr",
                                  model=shot + "/test.pt", mode="IN_PROCESS", threads=1, overwrite=True)
assert again == {"FINISHED"}, again
rerun = describe(tree)
r = scene.render
r.resolution_x, r.resolution_y, r.resolution_percentage = 64, 48, 100
settings = r.image_settings
settings.file_format, settings.color_depth, settings.color_mode = "OPEN_EXR", "32", "RGB"
for frame in (2, 4):
    scene.frame_set(frame)
    r.filepath = tmp + f"/user.{frame:04d}.exr"
    bpy.ops.render.render(write_still=True)
result = {"plate comp": {"before": before, "after": after, "rerun": rerun}}

# B: Blender's default compositor (Render Layers to the output), the plate not in it: the fill
# goes between Render Layers' image and the output. Structure only: a render would render 3D.
fill = tmp + "/fill/fill.####.exr"
for name, plate_source in (("default", None), ("clip", "CLIP"), ("files", "FILES")):
    other = bpy.data.scenes.new(name)
    tree = users_compositor(other)
    if plate_source == "CLIP":   # C: a Movie Clip node on the plate feeds the output
        clip = bpy.data.movieclips.load(shot + "/shot/plate.0001.exr")
        node = tree.nodes.new("CompositorNodeMovieClip")
        node.name, node.clip = "plate clip", clip
        tree.links.new(node.outputs["Image"], compat.output_socket(tree))
        source = Source("CLIP", clip.name)
    elif plate_source == "FILES":  # D: an Image node on the plate's files feeds a grade
        image = bpy.data.images.load(shot + "/shot/plate.0003.exr")
        node = tree.nodes.new("CompositorNodeImage")
        node.name, node.image = "plate files", image
        grade = tree.nodes.new("CompositorNodeExposure")
        grade.name = "grade"
        tree.links.new(node.outputs["Image"], grade.inputs["Image"])
        tree.links.new(grade.outputs["Image"], compat.output_socket(tree))
        source = Source("FILES", pattern=shot + "/shot/plate.%04d.exr")
    else:
        source = None
    before = describe(tree)
    compositor.add_result(other, fill, 1, 5, True, "fill", plate=source)
    result[name] = {"before": before, "after": describe(tree)}
addon.unregister()
print("RESULT", json.dumps(result))
"""


def _keyprop_node(description):
    names = [n for n in description["nodes"] if n.startswith("keyprop")]
    assert len(names) == 1, description["nodes"]
    return names[0]


def _links_without(description, node):
    return [link for link in description["links"] if node not in (link[0], link[2])]


@pytest.fixture(scope="module")
def users_compositor(shot, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blender_user_comp")
    return last_json(blender(USER_COMPOSITOR, tmp, shot, tmp)), tmp


def test_fill_goes_after_the_plate_in_the_users_compositor(users_compositor):
    """The artist's nodes stay; the fill takes the plate's place, so their grade applies to it."""
    result, _ = users_compositor
    case = result["plate comp"]
    before, after = case["before"], case["after"]
    fill = _keyprop_node(after)
    assert set(before["nodes"]) < set(after["nodes"]) and after["output"] == before["output"]
    kept = [link for link in before["links"] if link[0] != "plate read"]
    assert sorted(kept + [["plate read", "Image", fill, "Plate"], [fill, "Image", "grade", "Image"],
                          [fill, "Image", "viewer", "Image"]]) == after["links"]
    assert case["rerun"] == after, "a second run moved the fill"


def test_users_compositor_renders_the_fill(users_compositor):
    """A real render of the artist's compositor: their +1 stop grade over the written fill frames."""
    _, tmp = users_compositor
    for frame in (2, 4):
        rendered = io.read_image(tmp / f"user.{frame:04d}.exr").pixels
        fill = io.read_image(tmp / f"fill/fill.{frame:04d}.exr").pixels
        assert rendered.shape == fill.shape == (H, W, 3)
        np.testing.assert_allclose(rendered / 2.0, fill, rtol=0, atol=1 / 255)


@pytest.mark.parametrize("case", ["default", "clip", "files"])
def test_fill_placement_in_other_compositors(users_compositor, case):
    """Blender's default tree: in front of the output. A plate node (clip, files): right after it."""
    result, _ = users_compositor
    before, after = result[case]["before"], result[case]["after"]
    fill = _keyprop_node(after)
    assert set(before["nodes"]) < set(after["nodes"]) and len(after["nodes"]) == len(before["nodes"]) + 1
    output = after["output"]
    if case == "default":
        feeding = next(link for link in before["links"] if link[2] == output)
        taken = [feeding[0], feeding[1], fill, "Plate"]
        assert sorted(_links_without(before, output) + [taken, [fill, "Image", output, feeding[3]]]) \
            == after["links"]
    else:
        plate = {"clip": "plate clip", "files": "plate files"}[case]
        fed = next(link for link in before["links"] if link[0] == plate)
        assert sorted([link for link in before["links"] if link[0] != plate]
                      + [[plate, fed[1], fill, "Plate"], [fill, "Image", fed[2], fed[3]]]) == after["links"]


PANELS = """
import bpy, ctypes, itertools, json, os, sys, traceback
repo_dir, plugin, shot, report = sys.argv[1:5]
os.makedirs(repo_dir, exist_ok=True)
os.symlink(plugin, os.path.join(repo_dir, "keyprop"))
bpy.context.preferences.extensions.repos.new(name="keyprop dev", module="keyprop_dev",
                                             custom_directory=repo_dir, source="USER")
module = "bl_ext.keyprop_dev.keyprop"
bpy.ops.preferences.addon_enable(module=module)
addon = sys.modules[module]
prefs = bpy.context.preferences.addons[module].preferences
s = bpy.context.scene.keyprop
clip = bpy.data.movieclips.load(shot + "/shot/plate.0001.exr")
image = bpy.data.images.load(shot + "/shot/plate.0001.exr")
mask = bpy.data.masks.new("wire")
s.keyframes.add().frame = 1
key = s.keyframes.add()
key.frame, key.filepath = 5, shot + "/shot/keys.0005.exr"

wm = bpy.context.window_manager
window = wm.windows[0]
area = max(window.screen.areas, key=lambda a: a.width * a.height)
area.type, area.ui_type = "NODE_EDITOR", "CompositorNodeTree"
region = next(r for r in area.regions if r.type == "WINDOW")
found = []


class Drawn:  # what a Panel's draw() reads of its self
    def __init__(self, layout):
        self.layout = layout


libc = ctypes.CDLL(None)


def mark(text):  # on both streams, in order with Blender's own warnings (C stdio flushed first)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    os.write(1, (text + "\\n").encode())
    os.write(2, (text + "\\n").encode())


def attempt(name, draw):
    mark("DRAW " + name)
    try:
        draw()
        found.append([name, "ok"])
    except Exception:
        found.append([name, traceback.format_exc()])


def draw_all(menu, context):
    # A popup hands this callback a real UILayout; showing the popup afterwards crashes a
    # headless Blender, so this callback writes the report and ends the process itself.
    layout = menu.layout
    try:
        found.append(["poll main", addon.panels.KEYPROP_PT_main.poll(context)])
        found.append(["poll settings", addon.panels.KEYPROP_PT_settings.poll(context)])
        for plate, mask_kind, chosen, running, scene_range in itertools.product(
                ("CLIP", "IMAGE", "FILES"), ("MASK", "IMAGE", "FILES"), (True, False), (False, True), (True, False)):
            s.plate_source, s.mask_source = plate, mask_kind
            s.plate_clip = clip if chosen else None
            s.plate_image = s.mask_image = image if chosen else None
            s.mask = mask if chosen else None
            s.plate_pattern = s.mask_pattern = (shot + "/shot/plate.####.exr") if chosen else ""
            s.running, s.progress = running, 40.0 if running else 0.0
            s.status = "frame 3 filled (3/5)" if running else ""
            s.use_scene_range = scene_range
            s.keyframe_index = 1 if chosen else 0
            name = f"main plate={plate} mask={mask_kind} chosen={chosen} running={running} range={scene_range}"
            attempt(name, lambda: addon.panels.KEYPROP_PT_main.draw(Drawn(layout.column()), context))
        real_command = addon.jobs.worker_command
        for mode, command in itertools.product(("AUTO", "IN_PROCESS", "WORKER"), (True, False)):
            prefs.mode = mode
            addon.jobs.worker_command = real_command if command else (lambda python="": None)

            def preferences():
                type(prefs).layout = layout.box()  # as Blender's Preferences > Add-ons draws them
                try:
                    prefs.draw(context)
                finally:
                    del type(prefs).layout
            attempt(f"settings mode={mode} worker found={command}",
                    lambda: addon.panels.KEYPROP_PT_settings.draw(Drawn(layout.column()), context))
            attempt(f"preferences mode={mode} worker found={command}", preferences)
        addon.jobs.worker_command = real_command
        mark("CONTROL")
        layout.prop(s, "no_such_setting")  # the warning this test looks for must reach it
        mark("END")
    except Exception:
        found.append(["draw_all", traceback.format_exc()])
    finally:
        with open(report, "w") as f:
            json.dump(found, f)
        libc.fflush(None)
        os._exit(0)


with bpy.context.temp_override(window=window, area=area, region=region):
    wm.popup_menu(draw_all, title="keyprop")
print("the popup never drew")
"""

DRAW_WARNING = re.compile(r"property not found|unknown operator|not found:|Traceback|Error:|rna_uiItem", re.I)


def test_panels_and_preferences_draw(shot, tmp_path):
    """Every panel and the preferences, in every source combination, through a real UILayout."""
    report = tmp_path / "panels.json"
    proc = blender(PANELS, tmp_path, tmp_path / "repo", PLUGIN, shot, report)
    found = json.loads(report.read_text())
    assert found[:2] == [["poll main", True], ["poll settings", True]]
    failed = [f"{name}:\n{error}" for name, error in found[2:] if error != "ok"]
    assert not failed, "\n".join(failed)
    assert len(found) == 2 + 3 * 3 * 2 * 2 * 2 + 3 * 2 * 2
    warnings, control = [], ""
    for stream in (proc.stdout, proc.stderr):
        drawn, after = stream.split("\nCONTROL\n")
        warnings += [line for line in drawn.splitlines() if DRAW_WARNING.search(line)]
        control += after.split("\nEND\n")[0]
    assert not warnings, "\n".join(warnings)
    assert "property not found: KeypropSettings.no_such_setting" in control, \
        "the control warning did not come through: this test would not see a missing property"


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
import bpy, json, signal, sys
import keyprop.plugin.blender as addon
# Ctrl-C as at a terminal, whatever the test runner's shell left it as (a background shell
# starts its children with SIGINT ignored, and Python then never raises KeyboardInterrupt).
signal.signal(signal.SIGINT, signal.default_int_handler)
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
addon.unregister()
print("RESULT", json.dumps({"result": sorted(result)}))
"""


def test_cancel_keeps_whole_frames(shot, tmp_path):
    """Ctrl-C in headless Blender stops after the current frame, leaving only whole frames."""
    # A longer shot (the fixture's plates over and over): the frames after the first must take
    # longer than Ctrl-C takes to arrive, or the run ends before it is cancelled (a tiny frame
    # whose hole the carried fill shows fills in milliseconds). Not much longer: Blender 4.2
    # rasterizes the mask of every frame before the worker starts (90 or 120 frames: over 2
    # minutes). 45: with two windows filled at once, 30 frames finished before Ctrl-C arrived on
    # a loaded machine (4.2 and 4.5).
    frames = 45
    long_shot = tmp_path / "long"
    (long_shot / "shot").mkdir(parents=True)
    shutil.copy(shot / "test.pt", long_shot / "test.pt")
    for f in range(1, frames + 1):
        shutil.copy(shot / f"shot/plate.{(f - 1) % N + 1:04d}.exr", long_shot / f"shot/plate.{f:04d}.exr")
    out = tmp_path / "out" / "fill.####.exr"
    path = tmp_path / "cancel.py"
    path.write_text(PRELUDE + textwrap.dedent(CANCEL))
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender_user"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PY, str(path), str(long_shot), str(out), str(frames)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        first = Path(core_expand(out, 1))
        deadline = time.monotonic() + 120
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists(), "the keyframe was never written"
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # whatever went wrong, no Blender is left running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
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
