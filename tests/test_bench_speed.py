"""bench/pipeline_speed.py's real-footage part: runs end to end on a small shot and reports
what it promises (the table's columns, the JSON's fields, shares that are shares)."""
import json

import numpy as np
import pytest

from conftest import load_script, needs_clips


def load_bench():
    return load_script("bench/pipeline_speed.py", "pipeline_speed_under_test")


@needs_clips
def test_real_part_on_carphone(tmp_path, capsys):
    bench = load_bench()
    out_json = tmp_path / "speed.json"
    bench.main(["--only", "real", "--clips", "carphone", "--frames", "4", "--model", "preset:test",
                "--json", str(out_json)])
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| shot |"))
    for column in ("wall s/frame", "median s", "max s (frame)", "max/median", "setup s (/median)", "keyless/keyed",
                   "peak MiB", "CPU",
                   "flow", "search", "network", "fusion", "I/O", "other"):
        assert f"| {column} |" in header
    rows = [line for line in text.splitlines() if line.startswith("| carphone_")]
    assert len(rows) == 4   # walker and wire, keyed and keyless
    assert "load average" in text

    data = json.loads(out_json.read_text())
    assert data["frames"] == 4 and data["threads"] == 2
    got = {(r["shot"], r["mode"]) for r in data["rows"]}
    assert got == {(f"carphone_{k}", m) for k in ("walker", "wire") for m in ("keyed", "keyless")}
    for r in data["rows"]:
        assert r["size"] == "176x144" and r["frames"] == 4 and len(r["events"]) == 4
        assert r["not_timed"] == []            # every timed function was found
        assert 0 < r["median_s"] <= r["max_s"] and r["max_over_median"] >= 1.0
        assert r["setup_s"] > 0 and r["setup_over_median"] == pytest.approx(r["setup_s"] / r["median_s"])
        assert r["seconds_sum_over_wall"] == pytest.approx(1.0, abs=0.1)   # the setup's seconds and the frames
        assert r["wall_s_per_frame"] > 0 and r["peak_mib"] > 50 and 0.1 < r["cpu_utilisation"] < 2.5
        shares = r["shares"]
        assert set(shares) == {"flow", "search", "network", "fusion", "io", "io_main", "other"}
        compute = sum(shares[p] for p in ("flow", "search", "network", "fusion"))
        assert all(shares[p] >= 0 for p in shares if p != "other")
        assert compute + shares["other"] == pytest.approx(1.0)   # shares of the fills' time
        assert -0.05 < shares["other"] <= 1.0   # the parts never overlap: they cannot exceed the fills' time
        if r["mode"] == "keyed":
            assert r["keyless_over_keyed"] is None
            assert r["statuses"] == ["filled", "keyframe"]
        else:
            assert r["keyless_over_keyed"] > 0 and r["statuses"] == ["filled"]
            assert shares["flow"] + shares["search"] > 0   # keyless always aligns its own frames


@needs_clips
def test_upscaled_shot_is_painted_at_1080p():
    bench = load_bench()
    shot = bench.real_shot("bbb1080", "wire", 2)
    assert shot.kind == "bbb1080_wire"
    assert shot.plates[0].shape == (1080, 1920, 3) and shot.masks[0].shape == (1080, 1920)
    outside = shot.masks[0] == 0
    assert np.allclose(shot.plates[0][outside], shot.truths[0][outside], atol=1e-6)   # painted inside the mask only
    assert 0 < shot.masks[0].mean() < 0.05    # a wire: thin, scaled with the frame
    with pytest.raises(ValueError, match="unknown occluder"):
        bench.real_shot("bbb1080", "pole", 2)


@needs_clips
def test_real_part_against_a_revision(tmp_path, capsys):
    """--against REV runs every shot and mode with that revision's keyprop too, in turn with
    this tree's (a temporary worktree, removed after): the pace table compares them, bytes
    included (HEAD fills as this tree does)."""
    import subprocess

    bench = load_bench()
    out_json = tmp_path / "pace.json"
    bench.main(["--only", "real", "--clips", "carphone", "--kinds", "wire", "--frames", "4", "--model",
                "preset:test", "--against", "HEAD", "--json", str(out_json)])
    text = capsys.readouterr().out
    pace = [line for line in text.splitlines() if line.startswith("| carphone_wire | keye")
            or line.startswith("| carphone_wire | keyl")]
    assert len(pace) == 4, text   # keyed and keyless, this tree and HEAD
    assert {line.split(" | ")[2] for line in pace} == {"tree", "HEAD"}
    assert all(line.rstrip(" |").endswith("yes") for line in pace)
    data = json.loads(out_json.read_text())
    assert {(r["mode"], r["variant"], len(r["rows"])) for r in data["runs"]} == \
        {(m, v, 1) for m in ("keyed", "keyless") for v in ("tree", "HEAD")}
    assert len(data["rows"]) == 2   # the main table: this tree's runs
    worktrees = subprocess.run(["git", "-C", str(bench.Path(bench.__file__).resolve().parent.parent), "worktree",
                                "list"], capture_output=True, text=True).stdout
    assert "keyprop-against-" not in worktrees


def test_pace_table_counts_runs_over_2x_and_flags_other_bytes():
    bench = load_bench()

    def run(ratio, digest, wall=0.1, seconds=()):
        return {"max_over_median": ratio, "outputs_sha256": digest, "wall_s_per_frame": wall,
                "events": [{"frame": 1001 + i, "seconds": x} for i, x in enumerate(seconds)]}

    # Frame 1003 slow in one run alone (a hiccup), frame 1002 in two of three (the work).
    tree = [(1.0, 2.2, 1.0, 1.0), (1.0, 2.0, 3.0, 1.0), (1.0, 1.0, 1.0, 1.0)]
    runs = {("s", "keyed", "tree"): [run(1.5, "a", seconds=tree[0]), run(2.5, "a", seconds=tree[1]),
                                     run(2.1, "a", seconds=tree[2])],
            ("s", "keyed", "old"): [run(1.2, "a"), run(1.9, "b"), run(1.0, "a")],
            ("s", "keyless", "tree"): [run(1.1, "c", seconds=tree[0]), run(1.3, "c", seconds=tree[0])]}
    lines = bench.pace_table(runs).splitlines()
    assert lines[2] == "| s | keyed | tree | 3 | 0.100 | 1.50 2.50 2.10 | 2.03 | 2 | 2.00 (1002) | yes |"
    # Runs without their frames, or fewer than 3: no frame medians.
    assert lines[3] == "| s | keyed | old | 3 | 0.100 | 1.20 1.90 1.00 | 1.37 | 0 |  | NO |"
    assert lines[4] == "| s | keyless | tree | 2 | 0.100 | 1.10 1.30 | 1.20 | 0 |  | yes |"


def refused_in_one_line(capsys, argv) -> str:
    """The one stderr line with which the bench exits 2 on ``argv``."""
    bench = load_bench()
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_against_an_unknown_revision_is_one_line(capsys):
    line = refused_in_one_line(capsys, ["--only", "real", "--clips", "carphone", "--against", "no-such-revision"])
    assert line.startswith("pipeline_speed.py: --against no-such-revision: ")


def test_frames_past_a_cut_is_one_line(capsys):
    line = refused_in_one_line(capsys, ["--only", "real", "--clips", "bikes", "--frames", "48"])
    assert line.startswith("pipeline_speed.py: --frames 48: segment bikes[31:79] crosses a cut")
