"""The shot pipeline and `keyprop run`: real files of every format, chunks, resume, bad input."""
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
from keyprop.core import flow as flowlib
from keyprop.core import io
from keyprop.core.api import Settings, fill_frames, propagate
from keyprop.core.runtime import create_engine
from keyprop.core.shot import Shot

H, W, N, FIRST = 96, 136, 4, 101
MODEL = "preset:test"


def scene(frame, channels=3):
    """A smooth textured background panning 2 px/frame, with a dark bar (the rig) on it."""
    rng = np.random.default_rng(3)
    strip = cv2.GaussianBlur(rng.random((H, W + 40, 3)).astype(np.float32), (0, 0), 2.0)
    strip = (strip - strip.min()) / (strip.max() - strip.min())
    clean = np.ascontiguousarray(strip[:, 2 * frame:2 * frame + W])
    plate = clean.copy()
    mask = np.zeros((H, W), np.float32)
    x = 30 + 12 * frame
    mask[20:80, x:x + 10] = 1.0
    plate[mask > 0] = 0.05
    if channels == 4:
        alpha = np.linspace(0.2, 1.0, W, dtype=np.float32)[None, :].repeat(H, 0)[:, :, None]
        plate, clean = np.concatenate((plate, alpha), 2), np.concatenate((clean, alpha), 2)
    if channels == 1:
        plate, clean = plate.mean(2, keepdims=True), clean.mean(2, keepdims=True)
    return plate, clean, mask


def write_shot(root: Path, ext=".png", dtype=None, channels=3, linear_scale=1.0, keys=(0, N - 1)):
    like = io.ImageFormat(ext, dtype or ("uint8" if ext in (".png", ".jpg", ".tif") else "float32"), channels)
    for i in range(N):
        plate, clean, mask = scene(i, channels)
        f = FIRST + i
        io.write_image(root / f"plate.{f:04d}{ext}", plate * linear_scale if ext == ".exr" else plate, like=like)
        io.write_image(root / f"mask.{f:04d}.png", mask, like=io.ImageFormat(".png", "uint8", 1))
        if i in keys:
            io.write_image(root / f"key.{f:04d}{ext}", clean * linear_scale if ext == ".exr" else clean, like=like)
    return Shot(str(root / f"plate.####{ext}"), str(root / "mask.####.png"), str(root / f"key.####{ext}"),
                str(root / "out" / f"fill.####{ext}"))


@pytest.fixture(scope="module")
def engine():
    return create_engine("torch", model=MODEL, threads=2)


FORMATS = [(".png", "uint8", 3), (".png", "uint16", 3), (".png", "uint16", 4), (".png", "uint8", 1),
           (".tif", "uint8", 3), (".tif", "uint16", 3), (".tif", "float32", 3),
           (".exr", "float16", 4), (".exr", "float32", 3)]


@pytest.mark.parametrize("ext,dtype,channels", FORMATS)
def test_outside_mask_is_the_plate_bit_for_bit(tmp_path, engine, ext, dtype, channels):
    shot = write_shot(tmp_path, ext, dtype, channels, linear_scale=4.0)
    (tmp_path / "out").mkdir()
    result = propagate(shot, Settings(model=MODEL), engine=engine)
    assert result.statuses == {101: "keyframe", 102: "filled", 103: "filled", 104: "keyframe"}
    for f in (102, 103):
        plate = io.read_image(tmp_path / f"plate.{f:04d}{ext}")
        out = io.read_image(tmp_path / "out" / f"fill.{f:04d}{ext}")
        assert out.format.dtype == plate.format.dtype and out.format.channels == plate.format.channels
        mask = io.read_mask(tmp_path / f"mask.{f:04d}.png")
        outside = mask == 0
        assert np.array_equal(out.pixels[outside], plate.pixels[outside])
        assert not np.array_equal(out.pixels[~outside], plate.pixels[~outside])  # something was filled
        if channels == 4:  # alpha passes through everywhere
            assert np.array_equal(out.pixels[..., 3], plate.pixels[..., 3])
    # Keyframe frames are output as the keyframes.
    key = io.read_image(tmp_path / f"key.0101{ext}")
    assert np.array_equal(io.read_image(tmp_path / "out" / f"fill.0101{ext}").pixels, key.pixels)


def test_chunks_equal_full_run(tmp_path, engine):
    shot = write_shot(tmp_path)
    full_dir, chunk_dir = tmp_path / "full", tmp_path / "chunk"
    full_dir.mkdir(), chunk_dir.mkdir()
    propagate(Shot(shot.plate, shot.mask, shot.keys, str(full_dir / "f.####.png")), Settings(model=MODEL),
              engine=engine)
    for first, last in ((101, 102), (103, 103), (104, 104)):
        propagate(Shot(shot.plate, shot.mask, shot.keys, str(chunk_dir / "f.####.png"), first, last),
                  Settings(model=MODEL), engine=engine)
    for f in range(101, 105):
        a = cv2.imread(str(full_dir / f"f.{f:04d}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(chunk_dir / f"f.{f:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b), f"frame {f} differs between chunk and full run"


def test_fill_frames_in_memory_matches_files(tmp_path, engine):
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    propagate(shot, Settings(model=MODEL), engine=engine)
    frames = [io.read_image(tmp_path / f"plate.{FIRST + i:04d}.png").pixels for i in range(N)]
    frames[0] = io.read_image(tmp_path / "key.0101.png").pixels
    frames[-1] = io.read_image(tmp_path / "key.0104.png").pixels
    masks = [io.read_mask(tmp_path / f"mask.{FIRST + i:04d}.png") for i in range(N)]
    filled = fill_frames(frames, masks, [0, N - 1], engine)
    on_disk = io.read_image(tmp_path / "out" / "fill.0102.png").pixels
    assert np.abs(filled[1] - on_disk).max() <= 1 / 255 + 1e-6


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_run_json_progress_resume_and_overwrite(tmp_path, capsys):
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--keys", shot.keys, "--out", shot.out,
            "--model", MODEL, "--progress", "json", "--threads", "2"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["frame"] for e in events if e["event"] == "frame"] == [101, 102, 103, 104]
    assert events[-1]["event"] == "done" and events[-1]["preset"] == "test"
    # Existing outputs are never overwritten silently.
    code, out, err = run_cli(args, capsys)
    assert code == 2 and "exist already" in err and len(err.strip().splitlines()) == 1
    os.remove(tmp_path / "out" / "fill.0103.png")
    code, out, err = run_cli(args + ["--resume"], capsys)
    assert code == 0
    statuses = {e["frame"]: e["status"] for e in map(json.loads, out.splitlines()) if e["event"] == "frame"}
    assert statuses == {101: "skipped", 102: "skipped", 103: "filled", 104: "skipped"}
    code, out, err = run_cli(args + ["--overwrite", "--frames", "102-102"], capsys)
    assert code == 0 and '"frame": 102' in out


def test_cli_yaml_job(tmp_path, capsys):
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    job = {"plate": "plate.####.png", "mask": "mask.####.png", "keys": "key.####.png", "out": "out/f.%04d.png",
           "model": MODEL, "frames": "102-103", "max_keys": 1, "progress": "none"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, out, err = run_cli(["run", str(tmp_path / "job.yaml")], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["f.0102.png", "f.0103.png"]
    (tmp_path / "bad.yaml").write_text("plate: [unclosed")
    code, out, err = run_cli(["run", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and "bad.yaml" in err
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump({**job, "colour": "red"}))
    code, out, err = run_cli(["run", str(tmp_path / "unknown.yaml")], capsys)
    assert code == 2 and "colour" in err


def _bad_input_cases(root: Path, shot: Shot):
    """(description, mutate(root) -> extra CLI args, expected words in the message)."""
    def missing_plate(r):
        os.remove(r / "plate.0103.png")
        return []

    def size_mismatch(r):
        io.write_image(r / "mask.0102.png", np.zeros((H, W + 8), np.float32))
        return []

    def stray_key(r):
        import shutil
        shutil.copy(r / "key.0101.png", r / "key.0099.png")
        return []

    def corrupt_plate(r):
        (r / "plate.0102.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return []

    def corrupt_key(r):   # decoded ahead, while the masks are scanned
        (r / "key.0104.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return []

    def full_mask(r):
        io.write_image(r / "mask.0102.png", np.ones((H, W), np.float32))
        return []

    def out_is_input(r):
        return ["--out", shot.plate]

    def no_out_dir(r):
        return ["--out", str(r / "nowhere" / "f.####.png"), "--no-mkdir"]

    def bad_frames(r):
        return ["--frames", "104-101"]

    def nan_exr(r):
        img = np.ones((H, W, 3), np.float32)
        img[3, 4, 1] = np.nan
        cv2.imwrite(str(r / "plate.0102.exr"), img)
        return ["--plate", str(r / "plate.####.exr")]

    return [("missing plate frame", missing_plate, "plate.0103.png"),
            ("mask size", size_mismatch, "mask.0102.png"),
            ("keyframe outside the plate", stray_key, "keyframe 99 has no plate frame"),
            ("corrupt file", corrupt_plate, "plate.0102.png"),
            ("corrupt keyframe", corrupt_key, "key.0104.png"),
            ("full-frame mask", full_mask, "whole frame"),
            ("output equals input", out_is_input, "overwrite the plate"),
            ("missing output folder, --no-mkdir", no_out_dir, "does not exist"),
            ("bad range", bad_frames, "first frame after last"),
            ("nan in exr", nan_exr, "plate.0101.exr")]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    name, mutate, expected = _bad_input_cases(tmp_path, shot)[case]
    if name == "nan in exr":  # a whole EXR plate whose first frame holds a NaN
        for i in range(N):
            plate, _, _ = scene(i)
            if i == 0:
                plate[3, 4, 1] = np.nan
            cv2.imwrite(str(tmp_path / f"plate.{FIRST + i:04d}.exr"), plate)
    extra = mutate(tmp_path)
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--keys", shot.keys, "--out", shot.out,
            "--model", MODEL, "--progress", "none"]
    code, out, err = run_cli(args + extra, capsys)
    assert code == 2, (name, err)
    assert expected in err, (name, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
    assert os.listdir(tmp_path / "out") == [], name


def test_empty_mask_passes_through(tmp_path, engine, caplog):
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    io.write_image(tmp_path / "mask.0102.png", np.zeros((H, W), np.float32))
    result = propagate(shot, Settings(model=MODEL), engine=engine)
    assert result.statuses[102] == "passthrough"
    assert np.array_equal(io.read_image(tmp_path / "out" / "fill.0102.png").pixels,
                          io.read_image(tmp_path / "plate.0102.png").pixels)


def test_demo_subprocess_fills_bundled_shot(tmp_path):
    """The README's main command on the bundled sample shot, with a random-weight tiny model for speed."""
    proc = subprocess.run([sys.executable, "-m", "keyprop.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--model", MODEL, "--frames", "1001-1003", "--threads", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "model preset:test" in proc.stderr or "preset test" in proc.stderr
    assert sorted(os.listdir(tmp_path / "demo")) == ["fill.1001.png", "fill.1002.png", "fill.1003.png"]


# --- a first hour without friction (issue 18) ----------------------------------------------------

def test_run_makes_a_missing_output_folder_and_says_so(tmp_path, capsys):
    shot = write_shot(tmp_path)
    out = tmp_path / "renders" / "v001" / "fill.####.png"
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--keys", shot.keys, "--out", str(out),
            "--model", MODEL, "--progress", "none", "--threads", "2", "--frames", "101-102"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"made the output folder {out.parent}" in err
    assert sorted(os.listdir(out.parent)) == ["fill.0101.png", "fill.0102.png"]
    # Bad input found before any frame is written: the folders made for it are taken back.
    os.remove(tmp_path / "plate.0103.png")
    other = tmp_path / "elsewhere" / "deep" / "fill.####.png"
    code, _, err = run_cli(args[:8] + [str(other)] + args[9:-2], capsys)
    assert code == 2 and "plate.0103.png" in err
    assert not (tmp_path / "elsewhere").exists()
    # --no-mkdir: a missing folder is an error, as before.
    code, _, err = run_cli(args[:8] + [str(other)] + args[9:] + ["--no-mkdir"], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "elsewhere").exists()


def test_keys_pattern_matching_nothing_is_exit_2(tmp_path, capsys):
    """Not a silent, slower run without keyframes: leaving --keys out is how to ask for that."""
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--keys", str(tmp_path / "clean.####.png"),
            "--out", shot.out, "--model", MODEL, "--progress", "none"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "clean.####.png" in err and "--keys matches no file" in err
    assert os.listdir(tmp_path / "out") == []


def test_demo_follows_the_resume_overwrite_rule(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--model", MODEL, "--frames", "1001-1001", "--threads", "2",
            "--progress", "json"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "made the output folder" in err
    first = (out / "fill.1001.png").read_bytes()
    (out / "fill.1001.png").write_bytes(b"an artist's frame")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "exist already" in err and "--overwrite" in err
    assert (out / "fill.1001.png").read_bytes() == b"an artist's frame"  # untouched
    code, stdout, _ = run_cli(args + ["--resume"], capsys)
    assert code == 0 and '"status": "skipped"' in stdout
    code, _, _ = run_cli(args + ["--overwrite"], capsys)
    assert code == 0 and (out / "fill.1001.png").read_bytes() == first


def test_demo_output_is_ignored_by_git():
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().splitlines()
    assert "keyprop_demo/" in ignored  # the demo's default --out, made in the checkout


def test_truncated_png_gives_exactly_one_line(tmp_path):
    """keyprop's line only: OpenCV's own WARN for the same file stays off stderr."""
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    whole = (tmp_path / "plate.0102.png").read_bytes()
    (tmp_path / "plate.0102.png").write_bytes(whole[:len(whole) // 2])
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "keyprop.cli", "run", "--plate", shot.plate, "--mask", shot.mask,
                           "--keys", shot.keys, "--out", shot.out, "--model", MODEL, "--progress", "none",
                           "--threads", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"keyprop: {tmp_path / 'plate.0102.png'}: truncated"), \
        proc.stderr


def test_ctrl_c_stops_between_frames(tmp_path):
    """SIGINT mid-run: exit 130, only whole frames on disk, and a --resume run completes the shot."""
    import signal

    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    args = [sys.executable, "-m", "keyprop.cli", "run", "--plate", shot.plate, "--mask", shot.mask,
            "--keys", shot.keys, "--out", shot.out, "--model", MODEL, "--progress", "json", "--threads", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    setup = json.loads(proc.stdout.readline())  # the setup's line comes before any frame's
    first = json.loads(proc.stdout.readline())  # the first frame is done
    assert setup["event"] == "setup" and setup["frame"] == 102 and first["event"] == "frame"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert first["frame"] == 101
    written = sorted(os.listdir(tmp_path / "out"))
    assert all(name.startswith("fill.") and name.endswith(".png") for name in written)  # no temporary files
    assert 1 <= len(written) < 4
    for name in written:
        assert cv2.imread(str(tmp_path / "out" / name)) is not None
    proc = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and len(os.listdir(tmp_path / "out")) == 4


# --- no keyframes: the shot's own frames as sources (issue 8) ---------------------------------

def test_no_keyframes_fills_from_plate_frames(tmp_path, engine):
    shot = write_shot(tmp_path, keys=())
    (tmp_path / "out").mkdir()
    no_keys = Shot(shot.plate, shot.mask, "", shot.out)
    result = propagate(no_keys, Settings(model=MODEL), engine=engine)
    assert set(result.statuses.values()) == {"filled"}
    for f in range(101, 105):
        plate = io.read_image(tmp_path / f"plate.{f:04d}.png").pixels
        out = io.read_image(tmp_path / "out" / f"fill.{f:04d}.png").pixels
        outside = io.read_mask(tmp_path / f"mask.{f:04d}.png") == 0
        assert np.array_equal(out[outside], plate[outside])
        assert not np.array_equal(out[~outside], plate[~outside])
    # A chunk gives the full run's pixels.
    (tmp_path / "chunk").mkdir()
    propagate(Shot(shot.plate, shot.mask, "", str(tmp_path / "chunk" / "f.####.png"), 103, 103),
              Settings(model=MODEL), engine=engine)
    assert np.array_equal(cv2.imread(str(tmp_path / "chunk" / "f.0103.png")),
                          cv2.imread(str(tmp_path / "out" / "fill.0103.png")))


def revealed(filler, hole, chosen) -> float:
    """The share of the target's ``hole`` that the chosen sources [(frame, flow, error)] show
    once aligned by their flows (outside their own holes)."""
    ys, xs = np.nonzero(hole)
    seen = np.zeros(ys.size, bool)
    for cand, flow, _ in chosen:
        cand_hole = filler.plate_frame(cand)[1]
        qy = np.clip(np.rint(ys + flow[ys, xs, 1]).astype(int), 0, hole.shape[0] - 1)
        qx = np.clip(np.rint(xs + flow[ys, xs, 0]).astype(int), 0, hole.shape[1] - 1)
        seen |= cand_hole[qy, qx] == 0
    return float(seen.mean())


def test_sources_are_frames_that_reveal_the_hole(engine):
    from keyprop.core.api import ShotFiller, source_candidates
    from keyprop.core.roi import plan_roi

    frames, masks = [], []
    for i in range(6):
        plate, _, mask = scene(i)
        frames.append(plate)
        masks.append(mask)
    roi = plan_roi((0, 0, H, W), (H, W), 640, engine.stride)
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=None,
                        source_loader=lambda k: (frames[k], masks[k]))
    _, hole, target = filler.plate_frame(2)
    chosen = filler.choose_sources(target, hole, source_candidates(2, set(range(6))), 4)
    picked = [c[0] for c in chosen]
    assert picked and 2 not in picked
    assert len(picked) == len(set(picked)) <= 4
    # Together the sources show (nearly) all of the target's hole once aligned by their flows.
    assert revealed(filler, hole, chosen) > 0.9
    # Nearest first: frame 1 or 3 (the rig moved 12 px) reveals part of the hole already.
    assert picked[0] in (1, 3)


def test_single_frame_without_keys_is_inpainted(tmp_path, capsys):
    plate, _, mask = scene(1)
    io.write_image(tmp_path / "p.0001.png", plate, like=io.ImageFormat(".png", "uint8", 3))
    io.write_image(tmp_path / "m.0001.png", mask, like=io.ImageFormat(".png", "uint8", 1))
    (tmp_path / "out").mkdir()
    code, out, err = run_cli(["run", "--plate", str(tmp_path / "p.####.png"), "--mask", str(tmp_path / "m.####.png"),
                              "--out", str(tmp_path / "out" / "o.####.png"), "--model", MODEL, "--progress", "json"],
                             capsys)
    assert code == 0, err
    assert '"status": "inpainted"' in out and "own context" in err
    result = io.read_image(tmp_path / "out" / "o.0001.png").pixels
    original = io.read_image(tmp_path / "p.0001.png").pixels
    outside = io.read_mask(tmp_path / "m.0001.png") == 0
    assert np.array_equal(result[outside], original[outside])


def test_roi_inside_a_larger_frame_lines_up(engine):
    """The network sees the ROI's own pixels: hole and picture where the mask and plate put them."""
    from keyprop.core.api import ShotFiller
    from keyprop.core.roi import mask_bbox, plan_roi

    h, w = 300, 480
    rng = np.random.default_rng(5)
    plate = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    mask = np.zeros((h, w), np.float32)
    mask[200:230, 350:370] = 1
    roi = plan_roi(mask_bbox(mask), (h, w), 640, engine.stride)
    assert roi.y0 > 0 and roi.x0 > 0  # a strict sub-region of the frame
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=lambda k: plate)
    rgb, hole = filler._prepare(plate, mask)
    ys, xs = np.nonzero(hole)
    sy, sx = roi.work_h / roi.height, roi.work_w / roi.width
    assert abs(ys.mean() / sy + roi.y0 - 214.5) < 2 and abs(xs.mean() / sx + roi.x0 - 359.5) < 2
    expected = cv2.resize(plate[roi.y0:roi.y1, roi.x0:roi.x1], (roi.work_w, roi.work_h), interpolation=cv2.INTER_AREA)
    keep = hole == 0
    assert np.abs(rgb[keep] - expected[keep]).max() < 1e-5
    out = filler.fill(plate, mask, [0])
    assert np.array_equal(out[mask == 0], plate[mask == 0])


def test_keyframes_are_encoded_only_when_the_network_runs(tmp_path, engine, monkeypatch):
    """Where warped sources show the whole hole the network does not run, so nothing is encoded."""
    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    calls = []
    real = engine.encode_keyframe
    monkeypatch.setattr(engine, "encode_keyframe", lambda x: calls.append(x.shape) or real(x))
    propagate(shot, Settings(model=MODEL), engine=engine)
    assert calls == []
    # A hole no source shows (the same static box in every frame, no keyframes): the network runs.
    for i in range(N):
        mask = np.zeros((H, W), np.float32)
        mask[30:60, 50:80] = 1
        io.write_image(tmp_path / f"mask.{FIRST + i:04d}.png", mask, like=io.ImageFormat(".png", "uint8", 1))
    (tmp_path / "out2").mkdir()
    propagate(Shot(shot.plate, shot.mask, None, str(tmp_path / "out2" / "f.####.png")), Settings(model=MODEL),
              engine=engine)
    assert calls


def test_masks_kept_from_the_roi_scan_give_the_pixels_of_masks_read_again(tmp_path, engine, monkeypatch):
    import keyprop.core.api as api

    shot = write_shot(tmp_path)
    outs = {}
    for budget in (api.MASK_KEEP_BYTES, 0):
        monkeypatch.setattr(api, "MASK_KEEP_BYTES", budget)
        reads = []
        real = io.read_mask
        monkeypatch.setattr(io, "read_mask", lambda p: reads.append(p) or real(p))
        out = tmp_path / f"out{budget}"
        out.mkdir()
        propagate(Shot(shot.plate, shot.mask, shot.keys, str(out / "f.####.png")), Settings(model=MODEL),
                  engine=engine)
        monkeypatch.setattr(io, "read_mask", real)
        outs[budget] = [cv2.imread(str(out / f"f.{f:04d}.png"), cv2.IMREAD_UNCHANGED) for f in range(101, 105)]
        # Kept: each mask is decoded once (the scan); not kept: again for every frame filled or used.
        assert (len(reads) == N) == (budget > 0)
    assert all(np.array_equal(a, b) for a, b in zip(*outs.values()))


def test_detail_is_restored_along_the_reduced_axis_only(engine):
    """A tall ROI reduced in height only: the keyframe's fine vertical detail comes back at plate
    resolution, and nothing is added along the width (not reduced, nothing was lost)."""
    from keyprop.core.api import ShotFiller
    from keyprop.core.roi import ROI

    h, w = 400, 64
    rng = np.random.default_rng(2)
    key = np.repeat(rng.random((h, 1, 3)).astype(np.float32), w, axis=1)  # stripes: detail along y only
    roi = ROI(0, 0, h, w, 200, w)
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=lambda k: key)
    fill = cv2.resize(cv2.resize(key, (w, 200), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_CUBIC)
    flow = np.zeros((200, w, 2), np.float32)
    err = np.zeros((200, w), np.float32)
    restored = filler._restore_detail(fill, key, flow.transpose(2, 0, 1), err)
    inner = slice(8, -8)
    assert np.abs(restored - key)[inner].mean() < 0.5 * np.abs(fill - key)[inner].mean()
    # Along the width: a key with detail across x only gains nothing.
    key_x = np.repeat(rng.random((1, w, 3)).astype(np.float32), h, axis=0)
    fill_x = cv2.resize(cv2.resize(key_x, (w, 200), interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_CUBIC)
    assert np.abs(filler._restore_detail(fill_x, key_x, flow.transpose(2, 0, 1), err) - fill_x).max() < 1e-4


def test_detail_over_the_composite_box_is_that_part_of_the_whole_rois(engine):
    """The plate-size steps run over the box the composite reaches only: the keyframe's detail
    there is, to the bit, what the whole ROI's computation holds there (the blur's reach and
    the warp's sample positions included), whether the box meets the ROI's edges or not."""
    from keyprop.core.api import ShotFiller
    from keyprop.core.roi import ROI

    h, w = 300, 960
    rng = np.random.default_rng(3)
    key = rng.random((h, w, 3)).astype(np.float32)
    roi = ROI(0, 0, h, w, 128, 320)                       # reduced along both axes
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=lambda k: key)
    fill = rng.random((h, w, 3)).astype(np.float32)
    flow = (rng.random((128, 320, 2)).astype(np.float32) - 0.5) * 6
    err = rng.random((128, 320)).astype(np.float32)
    share = rng.random((128, 320)).astype(np.float32)
    whole = filler._restore_detail(fill, key, flow.transpose(2, 0, 1), err, share)
    for y0, x0, y1, x1 in ((100, 200, 180, 700), (0, 0, 40, w), (250, 900, h, w), (0, 0, h, w)):
        part = filler._restore_detail(fill[y0:y1, x0:x1], key, flow.transpose(2, 0, 1), err, share, (y0, x0, y1, x1))
        assert np.array_equal(part, whole[y0:y1, x0:x1]), (y0, x0, y1, x1)


def test_warp_over_part_of_the_image_is_that_part_of_the_whole_warp():
    rng = np.random.default_rng(4)
    image = rng.random((60, 80, 3)).astype(np.float32)
    flow = (rng.random((60, 80, 2)).astype(np.float32) - 0.5) * 9
    whole = flowlib.warp(image, flow)
    part = flowlib.warp(image, flow[10:50, 23:70], origin=(23, 10))
    assert np.array_equal(part, whole[10:50, 23:70])


def test_a_flow_to_an_adjacent_plate_frame_takes_its_own_motion(engine, monkeypatch):
    """Flows between plate frames t and t +- 1 go through flow.extrapolate with the source's
    flow to the frame beyond it (2s - t), when the filler knows that frame is there; other
    pairs (a frame two away, a keyframe, the frame beyond missing) keep the completed flow."""
    from keyprop.core import flow as flowlib
    from keyprop.core.api import ShotFiller
    from keyprop.core.roi import plan_roi

    calls = []
    real = flowlib.extrapolate

    def spy(forward, beyond_flow, target_hole, source_hole):
        calls.append((forward.shape, beyond_flow()[0].shape))
        return real(forward, beyond_flow, target_hole, source_hole)

    monkeypatch.setattr(flowlib, "extrapolate", spy)
    frames, masks = zip(*[(scene(i)[0], scene(i)[2]) for i in range(6)])
    roi = plan_roi((0, 0, H, W), (H, W), 640, engine.stride)

    def filler(source_frames):
        return ShotFiller(engine, roi, Settings(), False, key_loader=lambda k: frames[k],
                          source_loader=lambda k: (frames[k], masks[k]), source_frames=source_frames)

    known = filler(set(range(6)))
    target = known.plate_frame(2)[2]
    forward, _ = known._flow(target, known.plate_frame(3)[2])      # beyond: frame 4
    assert len(calls) == 1 and calls[0][0] == forward.shape
    known._flow(target, known.plate_frame(1)[2])                   # beyond: frame 0
    assert len(calls) == 2
    known._flow(target, known.plate_frame(4)[2])                   # two frames away
    known._flow(target, known.keyframe(0)[2], ("key", 0))          # a keyframe
    known._flow(known.plate_frame(5)[2], known.plate_frame(4)[2])  # beyond: frame 3, there
    assert len(calls) == 3
    known._flow(known.plate_frame(4)[2], known.plate_frame(5)[2])  # beyond: frame 6, missing
    assert len(calls) == 3
    unknown = filler(None)
    plain, _ = unknown._flow(unknown.plate_frame(2)[2], unknown.plate_frame(3)[2])
    assert len(calls) == 3
    # What it changes, it changes inside the target's hole only.
    hole = known.plate_frame(2)[1] > 0
    np.testing.assert_array_equal(forward[~hole], plain[~hole])


def test_flows_between_plate_frames_ask_for_the_plate_prealign_motion(engine, monkeypatch):
    """Flows between two plate frames are pre-aligned only where they move apart by
    PLATE_PREALIGN_MOTION (core.flow.flow_between's prealign_motion); flows to a keyframe
    whatever they move; none with prealign off."""
    from keyprop.core import filler as fillermod
    from keyprop.core import flow as flowlib
    from keyprop.core.api import ShotFiller
    from keyprop.core.roi import plan_roi

    asked = {}
    real = flowlib.flow_between

    def spy(target, source, prealign=False, dis_cache=None, aligned_cache=None, prealign_motion=0.0):
        asked[(target.tag, source.tag)] = (prealign, prealign_motion)
        return real(target, source, prealign, dis_cache, aligned_cache, prealign_motion)

    monkeypatch.setattr(flowlib, "flow_between", spy)
    frames, masks = zip(*[(scene(i)[0], scene(i)[2]) for i in range(N)])
    roi = plan_roi((0, 0, H, W), (H, W), 640, engine.stride)
    assert 0 < fillermod.PLATE_PREALIGN_MOTION < 1
    for prealign in (True, False):
        asked.clear()
        filler = ShotFiller(engine, roi, Settings(prealign=prealign), False, key_loader=lambda k: frames[k],
                            source_loader=lambda k: (frames[k], masks[k]), source_frames=set(range(N)))
        target = filler.plate_frame(1)[2]
        for source in (0, 2, 3):
            filler._flow(target, filler.plate_frame(source)[2])
        filler._flow(target, filler.keyframe(0)[2], ("key", 0))
        for source in (0, 2, 3):
            assert asked[(("plate", 1), ("plate", source))] == (prealign, fillermod.PLATE_PREALIGN_MOTION)
        assert asked[(("plate", 1), None)] == (prealign, 0.0)   # the keyframe (no tag)


def test_caches_stay_bounded_over_a_long_shot(engine):
    """The DIS pairs and prepared frames a filler keeps do not grow with the number of frames."""
    from keyprop.core.api import ShotFiller, source_candidates
    from keyprop.core.roi import plan_roi

    frames, masks = zip(*[(scene(i % N)[0], scene(i % N)[2]) for i in range(24)])
    roi = plan_roi((0, 0, H, W), (H, W), 640, engine.stride)
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=lambda k: frames[k],
                        source_loader=lambda k: (frames[k], masks[k]))
    for i in range(24):
        filler.fill(frames[i], masks[i], [0] if i else [], source_candidates(i, set(range(24))), i)
        assert len(filler._dis) <= filler._dis.size and len(filler._plate) <= filler._plate.size
        assert len(filler._aligned) <= filler._aligned.size and len(filler._adjacent) <= filler._adjacent.size
    # Plain pairs (tag, tag) and their pre-alignments (name, tag, tag): between plate frames only.
    assert all(tag[0] == "plate" for pair in filler._dis for tag in pair)
    assert all(tag[0] == "plate" for key in filler._aligned for tag in key[1:])
    assert {key[0] for key in filler._aligned} <= {"homography", "prealigned"}


# --- honest progress (issue "Keyless fills at working speed", item 5) -----------------------

def test_json_progress_seconds_add_up_to_the_run(tmp_path, capsys):
    """The setup's line comes first; each frame's seconds run from the previous frame's
    completion (the setup's end, for the first) to its own: summed with the setup's, the run's
    wall time (the frames are read ahead and written behind; none is counted twice)."""
    import time

    shot = write_shot(tmp_path, keys=())   # keyless: the shot's own frames as sources
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--out", shot.out,
            "--model", MODEL, "--progress", "json", "--threads", "2"]
    started = time.perf_counter()
    code, out, err = run_cli(args, capsys)
    wall = time.perf_counter() - started
    assert code == 0, err
    events = list(map(json.loads, out.splitlines()))
    setup, frames = events[0], [e for e in events if e["event"] == "frame"]
    assert setup["event"] == "setup" and setup["total"] == N and setup["frame"] == 101 and setup["seconds"] > 0
    assert [e for e in events if e["event"] == "setup"] == [setup]
    assert len(frames) == N and all(e["seconds"] >= 0 for e in frames)
    total = setup["seconds"] + sum(e["seconds"] for e in frames)
    assert abs(total - wall) <= max(0.1 * wall, 0.3), (total, wall, [e["seconds"] for e in frames])


def test_progress_seconds_never_run_ahead_of_the_clock(tmp_path, engine):
    """When a frame's event arrives, the seconds reported so far fit in the time since the
    call began (the old clock counted the next frame's fill in each frame too)."""
    import time

    shot = write_shot(tmp_path)
    (tmp_path / "out").mkdir()
    seen = []
    started = time.perf_counter()
    propagate(shot, Settings(model=MODEL), engine=engine,
              progress=lambda ev: seen.append((ev.seconds, time.perf_counter() - started)))
    assert len(seen) == N + 1   # the setup, then every frame
    reported = 0.0
    for seconds, elapsed in seen:
        reported += seconds
        assert reported <= elapsed + 1e-6, seen
    assert reported >= 0.9 * seen[-1][1] - 0.05, seen   # and nothing left out


def test_eta_is_the_recent_median_rate():
    from keyprop.core.api import eta_seconds

    steady = [1.0] * 8
    assert eta_seconds(steady, 10) == pytest.approx(10.0)
    assert eta_seconds(steady[:-1] + [30.0], 10) == pytest.approx(10.0)   # one slow frame: no jump
    assert eta_seconds(steady[:-1] + [0.01], 10) == pytest.approx(10.0)   # nor one fast one
    assert eta_seconds([1.0, 30.0], 10) == pytest.approx(10.0)            # even among two
    # Two windows filled side by side: 8 frames 2 s apart, then the window finished ahead all
    # at once, round after round. Blocks of one round (16 frames) see the true 1 s per frame
    # wherever the stream stops; one frame-by-frame median would say 0 or 2.
    rounds = ([2.0] * 8 + [0.001] * 8) * 4
    for end in (16, 24, 40, 64):
        assert eta_seconds(rounds[:end], 10, window=3, block=16) == pytest.approx(10.0, rel=0.55)
    assert eta_seconds(rounds, 10, window=3, block=16) == pytest.approx(10.0, rel=0.01)
    slow = rounds[:-1] + [30.0]
    assert eta_seconds(slow, 10, window=3, block=16) == pytest.approx(10.0, rel=0.01)  # one slow round: no jump
    assert eta_seconds([2.0] * 5, 10, window=3, block=16) == pytest.approx(20.0)     # before a full block
    assert eta_seconds([9.0] * 20 + [2.0] * 5, 10) == pytest.approx(20.0)  # recent frames, not since start
    assert eta_seconds([], 10) == 0.0 and eta_seconds(steady, 0) == 0.0


def _bar_run(monkeypatch, events, end=None):
    """`keyprop run --progress bar` with propagate replaced: emits ``events`` (done, total,
    seconds), then ``end``: None (a normal finish), 'cancel', or an exception to raise."""
    import io as stdio
    import keyprop.core.run_cli as run_cli_module
    from keyprop.core.api import FrameEvent, Result

    def fake_propagate(shot, settings, progress=None, cancel=None, **kwargs):
        result = Result(model_info={"preset": "test"})
        for done, total, seconds in events:
            result.frames.append(100 + done)
            result.statuses[100 + done] = "filled"
            progress(FrameEvent(100 + done, "filled", done, total, seconds, ""))
        if isinstance(end, Exception):
            raise end
        result.cancelled = end == "cancel"
        return result

    monkeypatch.setattr(run_cli_module, "propagate", fake_propagate)
    err = stdio.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    shot = Shot("p.####.png", "m.####.png", "", "out/f.####.png")
    try:
        code = run_cli_module._run(Settings(model=MODEL), shot, {"progress": "bar"})
    except ValueError as exc:   # as main_guarded prints it
        print(f"keyprop: {exc}", file=sys.stderr)
        code = 2
    return code, err.getvalue()


@pytest.mark.parametrize("end", [None, "cancel", ValueError("bad frame")])
def test_bar_ends_its_line_before_the_summary(monkeypatch, end):
    events = [(1, 4, 1.0), (2, 4, 1.0)] if end is not None else [(d, 4, 1.0) for d in (1, 2, 3, 4)]
    code, err = _bar_run(monkeypatch, events, end)
    assert code == {None: 0, "cancel": 130}.get(end, 2), err
    assert err.count("\r") == len(events)
    after_bar = err[err.rindex("\r"):]
    bar_line, rest = after_bar.split("\n", 1)
    assert "ETA" in bar_line and "keyprop" not in bar_line, err   # the bar's last line, ended
    assert rest.startswith("keyprop: "), err                      # the summary / error on its own line
    assert "\n\n" not in err, err                                  # and no blank line either


def test_bar_shows_the_setup_then_frames_at_the_frames_rate():
    """The setup's seconds are shown at 0 frames; the ETA is the frames' rate (the setup is
    not a frame: a long one does not move it)."""
    import io as stdio
    from keyprop.core.api import FrameEvent, SetupEvent
    from keyprop.core.run_cli import ProgressPrinter

    stream = stdio.StringIO()
    printer = ProgressPrinter("bar", stream_bar=stream)
    printer(SetupEvent(4, 30.0, 101))
    printer(FrameEvent(101, "filled", 1, 4, 1.0))
    printer.end_line()
    setup, frame = stream.getvalue().rstrip("\n").split("\r")[1:]
    assert setup.startswith("[") and "0/4 frames" in setup and "set up in 30.0s" in setup
    assert "1/4 frames" in frame and frame.endswith("ETA     3s")


def test_bar_line_ends_before_a_log_record():
    import io as stdio
    import logging
    from keyprop.core.api import FrameEvent
    from keyprop.core.run_cli import ProgressPrinter

    stream = stdio.StringIO()
    printer = ProgressPrinter("bar", stream_bar=stream)
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        with printer.guard_logging():
            printer(FrameEvent(101, "filled", 1, 3, 1.0))
            logging.getLogger("keyprop.test").warning("frame 102: a warning")
            printer(FrameEvent(102, "filled", 2, 3, 1.0))
        printer.end_line()
        printer.end_line()   # idempotent
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    assert lines[0].startswith("\r[") and lines[1] == "frame 102: a warning" and lines[2].startswith("\r[")
    assert lines[3:] == [""]


def creeping_blob_filler():
    """A ShotFiller over 40 frames of a still plate with a blob creeping 1 px a frame (each
    near frame reveals a sliver of a target's hole), and frame 20's candidates."""
    from keyprop.core.api import ShotFiller, source_candidates
    from keyprop.core.roi import plan_roi

    rng = np.random.default_rng(2)
    clean = cv2.GaussianBlur(rng.random((64, 160, 3)).astype(np.float32), (0, 0), 2.0)
    frames, masks = [], []
    for i in range(40):
        mask = np.zeros((64, 160), np.float32)
        mask[16:48, 40 + i:60 + i] = 1.0
        frames.append(np.where(mask[:, :, None] > 0, np.float32(0.05), clean))
        masks.append(mask)
    engine = create_engine("torch", model=MODEL, threads=1)
    roi = plan_roi((0, 0, 64, 160), (64, 160), 640, engine.stride)
    filler = ShotFiller(engine, roi, Settings(), False, key_loader=None,
                        source_loader=lambda k: (frames[k], masks[k]))
    return filler, source_candidates(20, set(range(40)))


def test_a_fill_that_carries_nothing_looks_farther_for_what_its_nearest_frames_hide():
    """A still plate with a blob creeping 1 px a frame: each near frame reveals a sliver of
    the target's hole. The usual search keeps the nearest four and leaves most of the hole to
    the network; a fill that carries nothing (``farther``) goes on, and farther frames take
    the places of those that add least until the hole is revealed."""
    filler, candidates = creeping_blob_filler()
    _, hole, target = filler.plate_frame(20)

    nearest = filler.choose_sources(target, hole, candidates, 4)
    assert [c for c, _, _ in nearest] == [21, 19, 22, 18]
    assert revealed(filler, hole, nearest) < 0.3
    farther = filler.choose_sources(target, hole, candidates, 4, farther=True)
    picked = [c for c, _, _ in farther]
    assert len(picked) <= 4 and picked == sorted(picked, key=candidates.index)
    assert max(abs(c - 20) for c in picked) >= 8
    assert revealed(filler, hole, farther) >= 0.98


def test_a_search_in_parts_makes_its_share_of_pairs_and_then_the_same_choice(monkeypatch):
    """choose_sources with ``pairs`` (core.api's lookahead: a keyless window's first frame's
    search, in parts on the turns before its own) makes at most that many of its candidates'
    DIS pairs, in the search's order, and stops (None) before the next; called again, it goes
    on. Once a part finds the search whole, the search finds the same sources as one made at
    once, and the fill's search then makes no flow."""
    filler, candidates = creeping_blob_filler()
    _, hole, target = filler.plate_frame(20)
    whole = creeping_blob_filler()[0]
    _, whole_hole, whole_target = whole.plate_frame(20)
    expected = whole.choose_sources(whole_target, whole_hole, candidates, 4, farther=True)

    def paired(f):
        return sorted(c for c in candidates if any(("plate", 20) in key and ("plate", c) in key for key in f._dis))

    made, parts = [], 0
    while filler.choose_sources(target, hole, candidates, 4, farther=True, pairs=1) is None:
        parts += 1
        made.append(paired(filler))
        assert len(made[-1]) == parts   # one more each part
    assert paired(filler) == paired(whole) and len(paired(whole)) >= 5
    flows = []
    monkeypatch.setattr(flowlib, "flow_between", lambda *args, **kwargs: flows.append(args))
    chosen = filler.choose_sources(target, hole, candidates, 4, farther=True)
    assert not flows
    assert [c for c, _, _ in chosen] == [c for c, _, _ in expected]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(chosen, expected))
