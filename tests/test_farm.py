"""keyprop farm: job files for Open Job Description and Deadline 10, run for real with `openjd run`.

The OpenJD tests run the shipped template with openjd-cli (the dev extra installs it) on a
tiny synthetic shot and the random-weight `preset:test` model: chunks of 1 frame and of 3
frames give exactly the bytes of one full `keyprop run` (with keyframes, and without them on
a shot that spans a temporal window boundary, so chunks start inside windows), a finished
chunk reruns to the same files, settings pass through to every chunk, and a chunk with bad
input fails the job with keyprop's one-line message.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from keyprop import cli
from keyprop.core import run_cli
from keyprop.core.temporal import WINDOW
from keyprop.plugin.farm import jobs

H, W, FIRST, N = 96, 136, 101, 4
KEYS = (101, 104)
MODEL = "preset:test"  # for tests that run no network
BIN = Path(sys.executable).parent
OPENJD = BIN / "openjd"
KEYPROP = BIN / "keyprop"
FIXTURES = Path(__file__).parent / "fixtures" / "farm"


def make_shot(root: Path) -> dict:
    """A smooth texture panning 2 px/frame with a dark bar (the rig) moving across it; PNG 8-bit."""
    rng = np.random.default_rng(7)
    strip = cv2.GaussianBlur(rng.random((H, W + 2 * N, 3)).astype(np.float32), (0, 0), 2.0)
    strip = (strip - strip.min()) / (strip.max() - strip.min())
    for i in range(N):
        frame = FIRST + i
        clean = np.ascontiguousarray(strip[:, 2 * i:2 * i + W])
        mask = np.zeros((H, W), np.uint8)
        mask[20:76, 30 + 14 * i:40 + 14 * i] = 255
        plate = clean.copy()
        plate[mask > 0] = 0.05
        cv2.imwrite(str(root / f"plate.{frame:04d}.png"), (plate * 255).round().astype(np.uint8))
        cv2.imwrite(str(root / f"mask.{frame:04d}.png"), mask)
        if frame in KEYS:
            cv2.imwrite(str(root / f"key.{frame:04d}.png"), (clean * 255).round().astype(np.uint8))
    return {"plate": str(root / "plate.####.png"), "mask": str(root / "mask.####.png"),
            "keys": str(root / "key.####.png")}


def make_keyless_shot(root: Path, first: int = 5, n: int = 10) -> dict:
    """As make_shot, without keyframes: frames first..first+n-1, the bar moving 8 px a frame."""
    rng = np.random.default_rng(11)
    strip = cv2.GaussianBlur(rng.random((H, W + 2 * n, 3)).astype(np.float32), (0, 0), 2.0)
    strip = (strip - strip.min()) / (strip.max() - strip.min())
    for i in range(n):
        frame = first + i
        mask = np.zeros((H, W), np.uint8)
        mask[20:76, 24 + 8 * i:34 + 8 * i] = 255
        plate = np.ascontiguousarray(strip[:, 2 * i:2 * i + W])
        plate[mask > 0] = 0.05
        cv2.imwrite(str(root / f"plate.{frame:04d}.png"), (plate * 255).round().astype(np.uint8))
        cv2.imwrite(str(root / f"mask.{frame:04d}.png"), mask)
    return {"plate": str(root / "plate.####.png"), "mask": str(root / "mask.####.png")}


def shot_args(shot, out):
    keys = ["--keys", shot["keys"]] if shot.get("keys") else []
    return ["--plate", shot["plate"], "--mask", shot["mask"], *keys, "--out", out]


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    root = tmp_path_factory.mktemp("farm_shot")
    return make_shot(root)


@pytest.fixture(scope="module")
def test_model(tmp_path_factory):
    """The tiny `test` preset saved as a model file.

    `--model preset:test` draws fresh random weights in every process, so chunks run as
    separate processes (as a farm runs them) would each use another network. A file is
    what a farm runs anyway.
    """
    from keyprop.core.model.presets import create_model, save_checkpoint

    path = tmp_path_factory.mktemp("model") / "keyprop_test.pt"
    save_checkpoint(create_model("test"), path)
    return str(path)


@pytest.fixture(scope="module")
def full_run(shot, test_model, tmp_path_factory):
    """One `keyprop run` over the whole shot: the bytes every chunking must reproduce."""
    out_dir = tmp_path_factory.mktemp("full")
    code = cli.main(["run", *shot_args(shot, str(out_dir / "fill.####.png")), "--model", test_model,
                     "--threads", "2", "--progress", "none"])
    assert code == 0
    return {f: (out_dir / f"fill.{f:04d}.png").read_bytes() for f in range(FIRST, FIRST + N)}


KEYLESS_FIRST, KEYLESS_N = 5, 10   # frames 5-14: windows 0-7 and 8-15, so chunks start inside them
KEYLESS_SETTINGS = ["--max-sources", "3", "--linear", "no"]


@pytest.fixture(scope="module")
def keyless_shot(tmp_path_factory):
    return make_keyless_shot(tmp_path_factory.mktemp("farm_keyless"), KEYLESS_FIRST, KEYLESS_N)


@pytest.fixture(scope="module")
def keyless_full_run(keyless_shot, test_model, tmp_path_factory):
    """One `keyprop run` without keyframes over the whole keyless shot."""
    out_dir = tmp_path_factory.mktemp("keyless_full")
    code = cli.main(["run", *shot_args(keyless_shot, str(out_dir / "fill.####.png")), "--model", test_model,
                     "--threads", "2", *KEYLESS_SETTINGS, "--progress", "none"])
    assert code == 0
    return outputs(out_dir)


def submit(args, capsys):
    code = cli.main(["farm", "submit", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def openjd_run(job_dir: Path, *extra, check=True):
    cmd = jobs.openjd_run_command(job_dir, str(OPENJD), list(extra))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def outputs(out_dir: Path) -> dict:
    return {int(p.name.split(".")[1]): p.read_bytes() for p in sorted(out_dir.glob("fill.*.png"))}


def task_chunks(log: str) -> list:
    """The Fill tasks' frame chunks, in the order openjd ran them."""
    return [line.split("= ")[1] for line in log.splitlines() if "Frame(CHUNK[INT]) =" in line]


def resolved(argv):
    """What `keyprop run ARGV` would run: (Settings, Shot, run options), by keyprop's own parser."""
    values = run_cli._job_values(cli.parse_args(argv))
    return run_cli._settings_and_shot(values)


def filled_template_task(job: jobs.FarmJob, frames: str, scratch: Path) -> list:
    """The template's Fill task command line for ``job``, as openjd would fill it in: parameters
    substituted, the embedded settings file written into ``scratch``."""
    template = yaml.safe_load(jobs.TEMPLATE.read_text())
    script = template["steps"][0]["script"]
    values = {f"{{{{Param.{k}}}}}": str(v) for k, v in jobs.openjd_parameter_values(job).items()}
    values["{{Task.Param.Frame}}"] = frames

    def fill(text):
        for token, value in values.items():
            text = text.replace(token, value)
        return text

    for embedded in script["embeddedFiles"]:
        path = scratch / embedded["filename"]
        path.write_text(fill(embedded["data"]))
        values[f"{{{{Task.File.{embedded['name']}}}}}"] = str(path)
    return [fill(arg) for arg in script["actions"]["onRun"]["args"]]


# --- OpenJD, for real -------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 3])
def test_openjd_chunks_give_the_bytes_of_one_full_run(shot, test_model, full_run, tmp_path, capsys, chunk_size):
    out_dir, job_dir = tmp_path / "out", tmp_path / "job"
    code, out, err = submit(["--engine", "openjd", *shot_args(shot, str(out_dir / "fill.####.png")),
                             "--chunk-size", str(chunk_size), "--job-dir", str(job_dir), "--model", test_model,
                             "--threads", "2", "--keyprop", str(KEYPROP)], capsys)
    assert code == 0, err
    assert out_dir.is_dir()  # made at submit, so the shot could be checked
    proc = openjd_run(job_dir)
    log = proc.stdout + proc.stderr
    chunks = task_chunks(log)
    if chunk_size == 1:
        assert chunks == ["101-101", "102-102", "103-103", "104-104"]
    else:
        assert len(chunks) == 2 and all("-" in c for c in chunks)
    assert "shot and model ok" in log            # the session's check ran once
    assert log.count("shot and model ok") == 1
    assert "all 4 output frame(s) 101-104 present" in log  # the Verify step
    assert outputs(out_dir) == full_run

    if chunk_size == 3:
        # A finished chunk run again (a retry, a requeue) succeeds and leaves the same files.
        before = outputs(out_dir)
        rerun = openjd_run(job_dir, "--step", "Fill", "--tasks", json.dumps([{"Frame": chunks[0]}]))
        assert '"event": "done"' in rerun.stdout
        assert outputs(out_dir) == before == full_run


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_openjd_keyless_chunks_give_the_bytes_of_one_full_run(keyless_shot, test_model, keyless_full_run, tmp_path,
                                                              capsys, chunk_size):
    """No --keys: every chunk fills from the shot's own frames. Frames 5-14 span the window
    boundary at 8, so chunks start inside windows and first fill the frames before them
    (unwritten): the bytes must still be those of one full run."""
    out_dir, job_dir = tmp_path / "out", tmp_path / "job"
    code, out, err = submit(["--engine", "openjd", *shot_args(keyless_shot, str(out_dir / "fill.####.png")),
                             "--chunk-size", str(chunk_size), "--job-dir", str(job_dir), "--model", test_model,
                             "--threads", "2", *KEYLESS_SETTINGS, "--keyprop", str(KEYPROP)], capsys)
    assert code == 0, err
    params = json.loads((job_dir / "openjd-params.json").read_text())
    assert params["Keys"] == "" and params["WarmupFrame"] == KEYLESS_FIRST
    assert params["MaxSources"] == 3 and params["Linear"] == "no" and params["PlateSources"] == "true"
    assets = yaml.safe_load((job_dir / "asset_references.yaml").read_text())["assetReferences"]
    assert assets["inputs"]["directories"] == [os.path.dirname(keyless_shot["plate"])]
    proc = openjd_run(job_dir)
    log = proc.stdout + proc.stderr
    chunks = [tuple(int(v) for v in c.split("-")) for c in task_chunks(log)]
    frames = list(range(KEYLESS_FIRST, KEYLESS_FIRST + KEYLESS_N))
    assert sorted(f for a, b in chunks for f in range(a, b + 1)) == frames
    assert all(b - a + 1 <= chunk_size for a, b in chunks)
    assert any(a % WINDOW != 0 and a != KEYLESS_FIRST for a, _ in chunks)   # a chunk starts inside a window
    assert log.count("shot and model ok") == 1 and "no keyframes" in log
    assert f"all {KEYLESS_N} output frame(s) 5-14 present" in log
    assert outputs(out_dir) == keyless_full_run
    assert sorted(keyless_full_run) == frames


def test_keyless_shot_depends_on_the_carried_fills(keyless_shot, test_model, keyless_full_run, tmp_path):
    """What makes the keyless chunk test meaningful: on this shot each frame's fill depends on
    the fills carried from the frames before it in its window (without them the bytes
    differ everywhere but at the window starts), which a chunk must recompute."""
    from keyprop.core import api

    out = tmp_path / "fill.####.png"
    api.propagate(api.Shot(keyless_shot["plate"], keyless_shot["mask"], "", str(out)),
                  api.Settings(model=test_model, threads=2, max_sources=3, linear=False, temporal=False))
    alone = outputs(tmp_path)
    differ = sorted(f for f in alone if alone[f] != keyless_full_run[f])
    assert differ == [f for f in range(KEYLESS_FIRST + 1, KEYLESS_FIRST + KEYLESS_N) if f % WINDOW != 0]


def test_openjd_settings_reach_every_chunk(shot, test_model, full_run, tmp_path, capsys):
    """--no-plate-sources (through the task's settings file) and --max-sources reach each chunk's
    `keyprop run`: the chunks give the bytes of a full run with the same flags, which differ
    from the default run's."""
    flags = ["--no-plate-sources", "--max-sources", "3"]
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    assert cli.main(["run", *shot_args(shot, str(full_dir / "fill.####.png")), "--model", test_model,
                     "--threads", "2", *flags, "--progress", "none"]) == 0
    expected = outputs(full_dir)
    assert expected != full_run   # the flags change the fill of this shot: passing them is visible
    out_dir, job_dir = tmp_path / "out", tmp_path / "job"
    code, out, err = submit(["--engine", "openjd", *shot_args(shot, str(out_dir / "fill.####.png")),
                             "--chunk-size", "2", "--job-dir", str(job_dir), "--model", test_model,
                             "--threads", "2", *flags, "--keyprop", str(KEYPROP)], capsys)
    assert code == 0, err
    openjd_run(job_dir)
    assert outputs(out_dir) == expected


def test_deadline_keyless_job(keyless_shot, tmp_path, capsys):
    job_dir = tmp_path / "job"
    code, out, err = submit(["--engine", "deadline", *shot_args(keyless_shot, str(tmp_path / "o" / "fill.####.png")),
                             "--chunk-size", "3", "--job-dir", str(job_dir), "--model", MODEL,
                             "--no-plate-sources", "--max-sources", "2", "--linear", "yes"], capsys)
    assert code == 0, err
    info = dict(line.split("=", 1) for line in (job_dir / jobs.DEADLINE_PLUGIN_INFO).read_text().splitlines())
    import shlex
    args = cli.parse_args(shlex.split(info["Arguments"].replace("<STARTFRAME>", "8").replace("<ENDFRAME>", "10")))
    assert args.keys is None and args.frames == "8-10" and args.max_sources == 2
    assert args.plate_sources is False and args.linear == "yes"
    assert "own frames" in (job_dir / jobs.DEADLINE_JOB_INFO).read_text()


def test_openjd_failed_chunk_fails_the_job_with_keyprops_message(shot, tmp_path, capsys):
    root = tmp_path / "broken"
    root.mkdir()
    for name in os.listdir(os.path.dirname(shot["plate"])):
        if name != "mask.0103.png":
            os.symlink(os.path.join(os.path.dirname(shot["plate"]), name), root / name)
    broken = {k: str(root / os.path.basename(v)) for k, v in shot.items()}
    job_dir = tmp_path / "job"
    # Where the submitter sees the files, submit catches it before writing a job.
    code, out, err = submit(["--engine", "openjd", *shot_args(broken, str(tmp_path / "out" / "fill.####.png")),
                             "--frames", "101-104", "--chunk-size", "1", "--job-dir", str(job_dir),
                             "--model", MODEL, "--threads", "2", "--keyprop", str(KEYPROP)], capsys)
    assert code == 2 and "mask frame(s) missing" in err and len(err.strip().splitlines()) == 1
    # Write the job anyway (as a submitter that cannot see the files would) and run the bad chunk.
    job = jobs.FarmJob(plate=broken["plate"], mask=broken["mask"], keys=broken["keys"],
                       out=str(tmp_path / "out" / "fill.####.png"), first=101, last=104, chunk_size=1,
                       keyprop=str(KEYPROP), warmup_frame=101, model=MODEL, threads=2)
    jobs.write_openjd_bundle(job, job_dir)
    proc = openjd_run(job_dir, "--step", "Fill", "--tasks", json.dumps([{"Frame": "103-103"}]), check=False)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "shot and model ok" in log  # the session check passed: frame 101 is fine
    errors = [line for line in log.splitlines() if "keyprop: " in line and "missing" in line]
    assert errors and "1 mask frame(s) missing in range 103-103" in errors[0]
    assert "Traceback" not in log
    assert not (tmp_path / "out" / "fill.0103.png").exists()


def test_openjd_template_passes_openjd_check():
    proc = subprocess.run([str(OPENJD), "check", str(jobs.TEMPLATE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openjd_template_shape():
    template = yaml.safe_load(jobs.TEMPLATE.read_text())
    assert template["specificationVersion"] == "jobtemplate-2023-09"
    assert template["extensions"] == ["TASK_CHUNKING"]
    fill, verify = template["steps"]
    (frame,) = fill["parameterSpace"]["taskParameterDefinitions"]
    assert frame["type"] == "CHUNK[INT]" and frame["chunks"]["rangeConstraint"] == "CONTIGUOUS"
    assert frame["chunks"]["defaultTaskCount"] == "{{Param.ChunkSize}}"
    assert fill["stepEnvironments"][0]["script"]["actions"]["onEnter"]["args"][:2] == ["farm", "prepare"]
    assert verify["dependencies"] == [{"dependsOn": "Fill"}]
    # Every value submit writes is a parameter of the template, and every required one is given.
    names = {p["name"] for p in template["parameterDefinitions"]}
    job = jobs.FarmJob("/s/p.####.exr", "/s/m.####.exr", "/s/k.####.exr", "/o/f.####.exr", 1, 9)
    values = jobs.openjd_parameter_values(job)
    assert set(values) == names


def test_openjd_task_command_is_keyprop_run_of_the_chunk(tmp_path):
    """The template's task arguments, filled in, are exactly run_arguments() (which Deadline uses
    too) after the settings file, which holds the default plate-sources setting."""
    job = jobs.FarmJob("/s/p.####.exr", "/s/m.####.exr", "/s/k.####.exr", "/o/f.####.exr", 1001, 1100,
                       model="/m/x.pt", dilate=3, feather=1.5, existing="resume")
    filled = filled_template_task(job, "1001-1010", tmp_path)
    assert filled[0] == "run" and filled[1] == str(tmp_path / "keyprop_settings.yaml")
    assert [filled[0], *filled[2:]] == jobs.run_arguments(job, "1001-1010")
    assert yaml.safe_load((tmp_path / "keyprop_settings.yaml").read_text()) == {"plate_sources": True}


@pytest.mark.parametrize("case", ["keyed", "keyless", "keys_only"])
def test_openjd_and_deadline_tasks_run_the_same(tmp_path, case):
    """The OpenJD task (settings file, `--keys ""`) and the Deadline task (flags) resolve, by
    keyprop run's own parser, to the same settings and shot: keys or none, --max-sources,
    --no-plate-sources and --linear included."""
    keys = "" if case == "keyless" else "/s/k.####.exr"
    job = jobs.FarmJob("/s/p.####.exr", "/s/m.####.exr", keys, "/o/f.####.exr", 1001, 1100, max_sources=3,
                       plate_sources=case != "keys_only", linear="yes" if case == "keyless" else "no")
    openjd = resolved(filled_template_task(job, "1001-1010", tmp_path))
    deadline = resolved(jobs.run_arguments(job, "1001-1010"))
    assert openjd[:2] == deadline[:2]
    without_keys = [{k: v for k, v in run.items() if k != "keys"} for run in (openjd[2], deadline[2])]
    assert without_keys[0] == without_keys[1]   # keys are compared in the shots (`--keys ""` or none: no keys)
    settings, shot, _ = openjd
    assert settings.max_sources == 3 and settings.plate_sources == (case != "keys_only")
    assert settings.linear is (case == "keyless") and shot.keys == keys
    assert ("--keys" in jobs.run_arguments(job, "1-2")) == bool(keys)
    assert ("--no-plate-sources" in jobs.run_arguments(job, "1-2")) == (case == "keys_only")


def test_openjd_bundle_files(shot, tmp_path, capsys):
    job_dir = tmp_path / "job"
    code, out, err = submit(["--engine", "openjd", *shot_args(shot, str(tmp_path / "o" / "fill.####.png")),
                             "--chunk-size", "2", "--job-dir", str(job_dir), "--model", MODEL], capsys)
    assert code == 0, err
    assert (job_dir / "template.yaml").read_text() == jobs.TEMPLATE.read_text()  # unchanged
    params = json.loads((job_dir / "openjd-params.json").read_text())
    bundle = yaml.safe_load((job_dir / "parameter_values.yaml").read_text())["parameterValues"]
    assert {p["name"]: p["value"] for p in bundle} == params
    assert params["Frames"] == "101-104" and params["WarmupFrame"] == 101 and params["ChunkSize"] == 2
    assets = yaml.safe_load((job_dir / "asset_references.yaml").read_text())["assetReferences"]
    assert assets["outputs"]["directories"] == [str(tmp_path / "o")]
    assert "openjd run" in out and "deadline bundle submit" in out


# --- Deadline 10 ------------------------------------------------------------------------------

GOLDEN_JOB = jobs.FarmJob(plate="/shots/sh010/plate/plate.####.exr", mask="/shots/sh010/roto/rig.####.png",
                          keys="/shots/sh010/paint/clean.####.exr", out="/shots/sh010/comp/keyprop v1/fill.####.exr",
                          first=1001, last=1100, chunk_size=8, keyprop="/opt/keyprop/.venv/bin/keyprop",
                          name="sh010", model="/models/keyprop_paper.pt", device="cuda", dilate=4, feather=2.0)


def test_deadline_files_match_golden():
    assert jobs.deadline_job_info(GOLDEN_JOB) == (FIXTURES / "deadline_job_info.job").read_text()
    assert jobs.deadline_plugin_info(GOLDEN_JOB) == (FIXTURES / "deadline_plugin_info.job").read_text()


def test_deadline_task_arguments_run_each_chunk(shot, tmp_path, monkeypatch, capsys):
    """Deadline substitutes <STARTFRAME>/<ENDFRAME> per task; the result parses as `keyprop run`."""
    info = dict(line.split("=", 1) for line in jobs.deadline_plugin_info(GOLDEN_JOB).splitlines())
    line = info["Arguments"].replace("<STARTFRAME>", "1009").replace("<ENDFRAME>", "1016")
    import shlex
    args = cli.parse_args(shlex.split(line))
    assert args.command == "run" and args.frames == "1009-1016" and args.out == GOLDEN_JOB.out
    assert args.overwrite and args.progress == "json" and args.dilate == 4 and args.feather == 2.0


def test_deadline_submit_calls_deadlinecommand(shot, tmp_path, monkeypatch, capsys):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "called.txt"
    fake = fake_bin / "deadlinecommand"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > '{record}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    job_dir = tmp_path / "job"
    code, out, err = submit(["--engine", "deadline", *shot_args(shot, str(tmp_path / "o" / "fill.####.png")),
                             "--chunk-size", "3", "--job-dir", str(job_dir), "--model", MODEL, "--submit"], capsys)
    assert code == 0, err
    assert record.read_text().split() == [str(job_dir / jobs.DEADLINE_JOB_INFO),
                                          str(job_dir / jobs.DEADLINE_PLUGIN_INFO)]
    job_info = (job_dir / jobs.DEADLINE_JOB_INFO).read_text()
    assert "Frames=101-104\n" in job_info and "ChunkSize=3\n" in job_info and "Plugin=CommandLine\n" in job_info


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["no_plate", "chunk_zero", "bad_frames", "run_local_deadline"])
def test_submit_bad_input_is_one_line_exit_2(shot, tmp_path, capsys, case):
    args = ["--engine", "openjd", *shot_args(shot, str(tmp_path / "o" / "fill.####.png")),
            "--job-dir", str(tmp_path / "job"), "--model", MODEL]
    if case == "no_plate":
        args[args.index("--plate") + 1] = str(Path(shot["plate"]).parent / "nothing.####.png")
    elif case == "chunk_zero":
        args += ["--chunk-size", "0"]
    elif case == "bad_frames":
        args += ["--frames", "110-101"]
    else:
        args[1] = "deadline"
        args += ["--run-local"]
    code, out, err = submit(args, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("keyprop farm: ") and "Traceback" not in err
    assert not (tmp_path / "job").exists()


def test_submit_without_engine_cli_says_what_to_install(shot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `deadline` anywhere
    monkeypatch.setattr(jobs, "find_tool", lambda name: None)
    code, out, err = submit(["--engine", "openjd", *shot_args(shot, str(tmp_path / "o" / "fill.####.png")),
                             "--job-dir", str(tmp_path / "job"), "--model", MODEL, "--submit"], capsys)
    assert code == 1 and "`deadline` not found" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "job" / "template.yaml").exists()  # the files are written anyway


def test_verify_names_the_missing_frames(tmp_path, capsys):
    for f in (1, 2, 4):
        (tmp_path / f"f.{f:04d}.exr").write_bytes(b"x")
    assert cli.main(["farm", "verify", "--out", str(tmp_path / "f.####.exr"), "--frames", "1-4"]) == 2
    err = capsys.readouterr().err
    assert "1 output frame(s) missing in 1-4: 3" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["farm", "verify", "--out", str(tmp_path / "f.####.exr"), "--frames", "1-2"]) == 0


def test_chunks_cover_the_range_exactly():
    assert jobs.chunks(1001, 1010, 4) == [(1001, 1004), (1005, 1008), (1009, 1010)]
    assert jobs.chunks(5, 5, 10) == [(5, 5)]
    assert jobs.parse_frames("-5--1") == (-5, -1) and jobs.parse_frames("7") == (7, 7)
    with pytest.raises(ValueError):
        jobs.parse_frames("1-x")
