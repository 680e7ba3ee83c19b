"""The KeyProp gizmo's plain logic, its text, its install, and the real `keyprop run` it starts.

Nothing here runs Nuke. The fake `nuke` module below only checks that the glue calls what it
should; it is no evidence that the gizmo works in Nuke (docs/nuke.md lists what to check there).
"""
import ast
import json
import os
import re
import sys
import time
import types
from pathlib import Path

import pytest

from keyprop.plugin.nuke import install_nuke
from keyprop.plugin.nuke import keyprop_command as kc

NUKE_DIR = Path(kc.__file__).resolve().parent
GIZMO = NUKE_DIR / "KeyProp.gizmo"
KEYPROP = Path(sys.executable).parent / "keyprop"
NUKE_FILES = ["keyprop_nuke.py", "keyprop_command.py", "init.py", "menu.py", "install_nuke.py"]


# --- keyframes, ranges, paths ---------------------------------------------------------------

@pytest.mark.parametrize("text,frames", [
    ("1001, 1024", [1001, 1024]), ("1024 1001 1001", [1001, 1024]), ("1001-1005x2", [1001, 1003, 1005]),
    ("1001-1003,1010", [1001, 1002, 1003, 1010]), ("", []), ("  -3--1 ", [-3, -2, -1]), ("7", [7]),
])
def test_parse_keyframes(text, frames):
    assert kc.parse_keyframes(text) == frames


@pytest.mark.parametrize("text", ["10a", "1010-1001", "1-5x0", "1..5"])
def test_parse_keyframes_bad_text_says_which_item(text):
    with pytest.raises(kc.KeypropError) as info:
        kc.parse_keyframes("1001, " + text)
    assert repr(text) in str(info.value) or text in str(info.value)


def test_check_range():
    kc.check_range(1001, 1010, [1001, 1010])
    with pytest.raises(kc.KeypropError, match="outside the frame range 1001-1010"):
        kc.check_range(1001, 1010, [1000])
    with pytest.raises(kc.KeypropError, match="empty"):
        kc.check_range(5, 4, [])


def test_chunk_around_is_aligned_to_the_first_frame():
    assert kc.chunk_around(1001, 1001, 1100, 10) == (1001, 1010)
    assert kc.chunk_around(1015, 1001, 1100, 10) == (1011, 1020)
    assert kc.chunk_around(1100, 1001, 1100, 30) == (1091, 1100)


def test_paths():
    assert kc.frame_file("/a/fill.####.exr", 7) == "/a/fill.0007.exr"
    assert kc.frame_file("/a/fill.%04d.exr", 1001) == "/a/fill.1001.exr"
    assert kc.frame_file("/a.b/x.%d.exr", 12) == "/a.b/x.12.exr"
    assert kc.nuke_path("C:\\shots\\sh010\\") == "C:/shots/sh010"
    assert kc.work_patterns("/w/") == {"plate": "/w/plate.####.exr", "mask": "/w/mask.####.exr",
                                       "keys": "/w/keys.####.exr"}
    with pytest.raises(kc.KeypropError):
        kc.frame_file("/a/fill.exr", 1)


def test_build_run_command_is_keyprop_run():
    cmd = kc.build_run_command("/env/bin/keyprop", "/w/plate.####.exr", "/w/mask.####.exr", "/w/keys.####.exr",
                               "/w/fill.####.exr", 1001, 1010, model="", device="cuda", dilate=3, feather=1.5,
                               existing="overwrite")
    assert cmd[:2] == ["/env/bin/keyprop", "run"]
    from keyprop import cli
    args = cli.parse_args(cmd[1:])
    assert (args.plate, args.mask, args.keys, args.out) == ("/w/plate.####.exr", "/w/mask.####.exr",
                                                            "/w/keys.####.exr", "/w/fill.####.exr")
    assert args.frames == "1001-1010" and args.model == "default" and args.device == "cuda"
    assert args.dilate == 3 and args.feather == 1.5 and args.progress == "json" and args.overwrite
    with pytest.raises(kc.KeypropError):
        kc.build_run_command("k", "p", "m", "k", "o", 1, 2, existing="append")


def test_progress_lines():
    line = '{"event": "frame", "frame": 1002, "status": "filled", "done": 2, "total": 8, "seconds": 1.0}'
    event = kc.parse_progress_line(line + "\n")
    assert event["frame"] == 1002 and kc.percent(event) == 25
    assert kc.progress_message(event) == "frame 1002 filled (2/8)"
    setup = kc.parse_progress_line('{"event": "setup", "seconds": 0.64, "total": 8, "frame": 1001}')
    assert kc.percent(setup) == 0 and kc.progress_message(setup) == "set up in 0.6s, filling 8 frame(s)"
    done = kc.parse_progress_line('{"event": "done", "frames": 8}')
    assert kc.percent(done) == 100 and kc.progress_message(done) == "done: 8 frame(s)"
    for noise in ["", "keyprop: stopping", "{not json", "[1, 2]", '{"frame": 3}']:
        assert kc.parse_progress_line(noise) is None
    assert kc.error_line("warning\nkeyprop: /w/mask.0003.exr: missing\n\n") == "keyprop: /w/mask.0003.exr: missing"


def test_find_keyprop(tmp_path):
    exe = tmp_path / "keyprop"
    exe.write_text("")
    assert kc.find_keyprop(str(tmp_path), {"KEYPROP_EXE": "/x/keyprop"}) == "/x/keyprop"
    with pytest.raises(kc.KeypropError, match="install.py --nuke"):
        kc.find_keyprop(str(tmp_path), {})
    (tmp_path / kc.CONFIG_NAME).write_text(json.dumps({"keyprop": str(exe)}))
    assert kc.find_keyprop(str(tmp_path), {}) == str(exe)
    exe.unlink()
    with pytest.raises(kc.KeypropError, match="does not exist"):
        kc.find_keyprop(str(tmp_path), {})


# --- the process: a stand-in keyprop, then the real one ----------------------------------------

FAKE_KEYPROP = r"""
import json, sys, time
frames = int(sys.argv[1]); delay = float(sys.argv[2]); fail = sys.argv[3] == "fail"
print("some log line", flush=True)
for i in range(frames):
    time.sleep(delay)
    print(json.dumps({"event": "frame", "frame": 1 + i, "status": "filled", "done": i + 1, "total": frames}),
          flush=True)
if fail:
    print("keyprop: /w/mask.0004.exr: cannot read the mask", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"event": "done", "frames": frames}), flush=True)
"""


def fake_run(tmp_path, frames, delay, mode="ok"):
    script = tmp_path / "fake_keyprop.py"
    script.write_text(FAKE_KEYPROP)
    return kc.KeypropRun([sys.executable, str(script), str(frames), str(delay), mode])


def test_follow_reports_every_frame(tmp_path):
    seen = []
    code = kc.follow(fake_run(tmp_path, 3, 0.0), seen.append, lambda: False, poll=0.05)
    assert code == 0 and [e.get("frame") for e in seen] == [1, 2, 3, None] and seen[-1]["event"] == "done"


def test_follow_raises_keyprops_line(tmp_path):
    with pytest.raises(kc.KeypropError) as info:
        kc.follow(fake_run(tmp_path, 1, 0.0, "fail"), lambda e: None, lambda: False, poll=0.05)
    assert str(info.value) == "keyprop: /w/mask.0004.exr: cannot read the mask"


def test_cancel_stops_within_a_poll(tmp_path):
    started = time.monotonic()
    code = kc.follow(fake_run(tmp_path, 50, 1.0), lambda e: None, lambda: time.monotonic() - started > 0.3,
                     poll=0.05)
    assert code == 130 and time.monotonic() - started < 10


def test_missing_executable_is_a_message():
    with pytest.raises(kc.KeypropError, match="cannot start keyprop"):
        kc.KeypropRun(["/nonexistent/keyprop", "run"])


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    from test_farm import make_shot

    root = tmp_path_factory.mktemp("nuke_shot")
    return make_shot(root)


def test_real_keyprop_run_cancel_and_resume(shot, tmp_path):
    """The command the gizmo builds, run in keyprop's environment (PNG here for speed).

    Cancelling (the ProgressTask's button) stops keyprop with only whole frames written;
    the next Process with existing = resume keeps them and fills the rest.
    """
    import cv2

    out = str(tmp_path / "fill.####.png")
    cmd = kc.build_run_command(str(KEYPROP), shot["plate"], shot["mask"], shot["keys"], out, 101, 104,
                               model="preset:test", existing="resume", extra=["--threads", "2"])
    seen = []
    code = kc.follow(kc.KeypropRun(cmd), seen.append, lambda: any(e["event"] == "frame" for e in seen), poll=0.05)
    assert code == 130
    written = sorted(os.listdir(tmp_path))
    assert 1 <= len(written) < 4 and all(re.fullmatch(r"fill\.\d{4}\.png", n) for n in written), written
    for name in written:
        assert cv2.imread(str(tmp_path / name)) is not None  # whole files, no partial writes
    seen = []
    assert kc.follow(kc.KeypropRun(cmd), seen.append, lambda: False) == 0
    frames = [e for e in seen if e["event"] == "frame"]
    assert seen[0]["event"] == "setup"
    assert [e["frame"] for e in frames] == [101, 102, 103, 104] and seen[-1]["event"] == "done"
    assert [e["status"] for e in frames][:len(written)] == ["skipped"] * len(written)
    assert {e["status"] for e in frames[len(written):]} <= {"filled", "keyframe"}
    assert [kc.percent(e) for e in frames] == [25, 50, 75, 100]
    assert kc.missing_frames(out, [101, 102, 103, 104]) == []


def test_real_keyprop_bad_input_is_keyprops_line(shot, tmp_path):
    cmd = kc.build_run_command(str(KEYPROP), shot["plate"], shot["mask"], str(tmp_path / "clean.####.png"),
                               str(tmp_path / "fill.####.png"), 101, 103, model="preset:test")
    with pytest.raises(kc.KeypropError) as info:
        kc.follow(kc.KeypropRun(cmd), lambda e: None, lambda: False)
    assert str(info.value).startswith("keyprop: ") and "--keys matches no file" in str(info.value)


# --- the gizmo's text -----------------------------------------------------------------------------

def parse_nuke_script(text):
    """A small reader for Nuke's script syntax: nodes with knobs, `set`/`push` and the node stack.

    Returns (gizmo knobs, gizmo user knobs {name: type}, nodes [{class, knobs, inputs}]) where
    ``inputs`` names each node's input nodes in input order (0 first), from the stack rules:
    a node takes its inputs from the top of the stack (input 0 = top) and pushes itself.
    """
    lines = text.splitlines()
    nodes, stack, variables = [], [], {}
    gizmo_knobs, user_knobs = {}, {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#") or line.startswith("version") or line == "end_group":
            continue
        if line.startswith("set "):
            _, name, _ = line.split(" ", 2)
            variables[name] = stack[-1]
            continue
        if line.startswith("push "):
            stack.append(variables[line.split()[1][1:]])
            continue
        match = re.match(r"^(\w+) \{$", line)
        assert match, f"unexpected line {i}: {line}"
        cls, knobs = match.group(1), {}
        while lines[i].strip() != "}":
            knob_line = lines[i].strip()
            i += 1
            user = re.match(r"^addUserKnob \{(\d+) (\w+)", knob_line)
            if user:
                user_knobs[user.group(2)] = int(user.group(1))
                continue
            name, _, value = knob_line.partition(" ")
            knobs[name] = value.strip('"') if value.startswith('"') and value.endswith('"') else value
        i += 1
        if cls == "Gizmo":
            gizmo_knobs = knobs
            continue
        n_inputs = int(knobs.get("inputs", 1))
        inputs = [stack.pop() for _ in range(n_inputs)]  # top of the stack first = input 0
        node = {"class": cls, "name": knobs.get("name"), "knobs": knobs, "inputs": inputs}
        nodes.append(node)
        stack.append(node["name"])
    return gizmo_knobs, user_knobs, nodes


@pytest.fixture(scope="module")
def gizmo():
    return parse_nuke_script(GIZMO.read_text())


def test_gizmo_inputs(gizmo):
    knobs, _, nodes = gizmo
    assert knobs["inputs"] == "3"
    inputs = sorted((int(n["knobs"].get("number", 0)), n["name"]) for n in nodes if n["class"] == "Input")
    assert inputs == [(0, "plate"), (1, "mask"), (2, "keys")]


def test_gizmo_knobs(gizmo):
    _, user, _ = gizmo
    # String, Int, File, Enumeration, Double, PyScript, Boolean, Text (Nuke's addUserKnob type numbers).
    expected = {"keyframes": 1, "first_frame": 3, "last_frame": 3, "model": 2, "device": 4, "dilate": 3,
                "feather": 7, "work_dir": 2, "output": 2, "existing": 4, "process": 22, "show_result": 6,
                "farm_process": 6, "status": 26}
    assert {k: user[k] for k in expected} == expected
    text = GIZMO.read_text()
    assert "keyprop_nuke.process(nuke.thisNode())" in text
    assert re.search(r"addUserKnob \{4 device .* M \{auto cpu cuda\}", text)
    assert re.search(r"addUserKnob \{4 existing .* M \{overwrite resume\}", text)


def test_gizmo_internal_nodes_are_wired_for_the_module(gizmo):
    _, _, nodes = gizmo
    by_name = {n["name"]: n for n in nodes}
    assert by_name["write_plate"]["inputs"] == ["plate"]
    assert by_name["mask_to_rgb"]["inputs"] == ["mask"] and by_name["write_mask"]["inputs"] == ["mask_to_rgb"]
    assert by_name["keys_source"]["inputs"] == ["plate", "keys"]       # which 0 = plate, 1 = keys input
    assert by_name["write_keys"]["inputs"] == ["keys_source"]
    assert by_name["show_result_switch"]["inputs"] == ["plate", "result_read"]
    assert by_name["show_result_switch"]["knobs"]["which"] == "{{parent.show_result}}"
    assert by_name["Output1"]["inputs"] == ["show_result_switch"]
    for name in ("write_plate", "write_mask", "write_keys"):
        write = by_name[name]["knobs"]
        assert write["file_type"] == "exr" and write["raw"] == "true"
        # The stray-render default path is the one the module renders to.
        key = name.split("_")[1]
        assert write["file"].replace("\\[value parent.work_dir]", "/w") == kc.work_patterns("/w")[key]
    assert by_name["result_read"]["class"] == "Read" and by_name["result_read"]["knobs"]["raw"] == "true"


# --- keyprop_nuke against a stand-in `nuke` (glue only; not Nuke coverage) ------------------------

class Knob:
    def __init__(self, value=None):
        self._value = value
        self.executed = 0

    def value(self):
        return self._value

    def evaluate(self):
        return self._value

    def setValue(self, value):
        self._value = value

    def execute(self):
        self.executed += 1


class Node:
    def __init__(self, name, cls, knobs=None, inputs=()):
        self._name, self._cls, self.knobs, self._inputs = name, cls, dict(knobs or {}), list(inputs)
        self.children = {}

    def __getitem__(self, key):
        return self.knobs.setdefault(key, Knob())

    def name(self):
        return self._name

    fullName = name

    def Class(self):
        return self._cls

    def input(self, i):
        return self._inputs[i] if i < len(self._inputs) else None

    def dependencies(self):
        return [n for n in self._inputs if n is not None]

    def __enter__(self):
        fake_nuke.context.append(self)

    def __exit__(self, *exc):
        fake_nuke.context.pop()


fake_nuke = types.ModuleType("nuke")
fake_nuke.context = []
fake_nuke.executed = []
fake_nuke.env = {"gui": False}
fake_nuke.toNode = lambda name: fake_nuke.context[-1].children[name]
fake_nuke.execute = lambda write, first, last: fake_nuke.executed.append((write.name(), first, last))


@pytest.fixture()
def nuke_glue(monkeypatch):
    monkeypatch.setitem(sys.modules, "nuke", fake_nuke)
    sys.modules.pop("keyprop.plugin.nuke.keyprop_nuke", None)
    from keyprop.plugin.nuke import keyprop_nuke
    fake_nuke.executed.clear()
    yield keyprop_nuke
    sys.modules.pop("keyprop.plugin.nuke.keyprop_nuke", None)


def keyprop_node(tmp_path, keys_input=None, **values):
    knobs = {"keyframes": "101, 104", "first_frame": 101, "last_frame": 104, "work_dir": str(tmp_path / "w"),
             "output": "", "model": "preset:test", "device": "cpu", "dilate": 0, "feather": 0.0,
             "existing": "overwrite", "farm_process": True}
    knobs.update(values)
    node = Node("KeyProp1", "KeyProp", {k: Knob(v) for k, v in knobs.items()},
                inputs=[Node("Read1", "Read"), Node("Roto1", "Roto"), keys_input])
    for name, cls in (("write_plate", "Write"), ("write_mask", "Write"), ("write_keys", "Write"),
                      ("keys_source", "Switch"), ("result_read", "Read")):
        node.children[name] = Node(name, cls)
    return node


def test_glue_settings_and_input_renders(nuke_glue, tmp_path):
    node = keyprop_node(tmp_path)
    s = nuke_glue.settings(node)
    assert s["out"] == str(tmp_path / "w") + "/fill.####.exr" and s["keyframes"] == [101, 104]
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "keys.0102.exr").write_text("stale")      # from an earlier keyframe list
    (tmp_path / "w" / "mask.0103.exr").write_text("rendered")
    patterns = nuke_glue.render_inputs(node, s, only_missing=True)
    assert not (tmp_path / "w" / "keys.0102.exr").exists()
    assert fake_nuke.executed == [("write_plate", 101, 104), ("write_mask", 101, 102), ("write_mask", 104, 104),
                                  ("write_keys", 101, 101), ("write_keys", 104, 104)]
    assert node.children["keys_source"]["which"].value() == 0   # no keys input: keys come from the plate
    assert node.children["write_plate"]["file"].value() == patterns["plate"]
    node_with_keys = keyprop_node(tmp_path, keys_input=Node("Paint", "RotoPaint"))
    nuke_glue.render_inputs(node_with_keys, s, only_missing=False)
    assert node_with_keys.children["keys_source"]["which"].value() == 1


@pytest.mark.parametrize("knob,value,message", [("keyframes", "", "list the clean keyframes"),
                                                ("keyframes", "99", "outside the frame range"),
                                                ("last_frame", 100, "empty"),
                                                ("work_dir", "./keyprop/KeyProp1", "save the script first")])
def test_glue_settings_errors(nuke_glue, tmp_path, knob, value, message):
    with pytest.raises(kc.KeypropError, match=message):
        nuke_glue.settings(keyprop_node(tmp_path, **{knob: value}))


def test_glue_before_render_finds_upstream_gizmos(nuke_glue, tmp_path, monkeypatch):
    gizmo = keyprop_node(tmp_path)
    write = Node("Write1", "Write", inputs=[Node("Grade1", "Grade", inputs=[gizmo])])
    processed = []
    monkeypatch.setattr(nuke_glue, "process_blocking", lambda node: processed.append(node.name()))
    fake_nuke.thisNode = lambda: write
    fake_nuke.env["gui"] = True
    nuke_glue.before_render()
    assert processed == []                       # with a GUI the artist presses Process
    fake_nuke.env["gui"] = False
    nuke_glue.before_render()
    assert processed == ["KeyProp1"]
    gizmo["farm_process"].setValue(False)
    nuke_glue.before_render()
    assert processed == ["KeyProp1"]


# --- install and Nuke's Python ---------------------------------------------------------------------

def test_install_into_a_nuke_folder(tmp_path):
    exe = tmp_path / "env" / "keyprop"
    exe.parent.mkdir()
    exe.write_text("")
    nuke_dir = tmp_path / ".nuke"
    nuke_dir.mkdir()
    (nuke_dir / "init.py").write_text("import nuke\nnuke.pluginAddPath('./other')")  # the artist's own
    message = install_nuke.install(str(exe), str(nuke_dir))
    assert "KeyProp gizmo installed" in message
    for name in install_nuke.PLUGIN_FILES:
        assert (nuke_dir / "keyprop" / name).read_bytes() == (NUKE_DIR / name).read_bytes()
    assert json.loads((nuke_dir / "keyprop" / "keyprop_env.json").read_text()) == {"keyprop": str(exe)}
    install_nuke.install(str(exe), str(nuke_dir))  # again: files updated, init.py untouched
    init = (nuke_dir / "init.py").read_text()
    assert init.startswith("import nuke\nnuke.pluginAddPath('./other')\n")
    assert init.count(install_nuke.INIT_LINE) == 1
    assert kc.find_keyprop(str(nuke_dir / "keyprop"), {}) == str(exe)
    with pytest.raises(install_nuke.InstallError):
        install_nuke.install(str(tmp_path / "nothing"), str(nuke_dir))


def test_install_py_nuke_option(tmp_path):
    """`python install.py --nuke` wires the gizmo to this environment (the pip steps are skipped here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keyprop_install", NUKE_DIR.parent.parent / "install.py")
    install_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install_py)
    assert install_py.install_nuke(str(tmp_path / ".nuke"), Path(sys.executable)) == 0
    config = json.loads((tmp_path / ".nuke" / "keyprop" / "keyprop_env.json").read_text())
    assert config["keyprop"] == str(KEYPROP)


@pytest.mark.parametrize("name", NUKE_FILES)
def test_nuke_side_is_python_3_9_without_numpy_or_torch(name):
    source = (NUKE_DIR / name).read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"numpy", "torch", "cv2", "keyprop", "yaml"}, imported
