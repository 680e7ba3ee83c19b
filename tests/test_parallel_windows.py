"""Temporal windows filled side by side (Settings.parallel_windows, core.api._WindowFills): the
bytes of one frame after another, written and reported in frame order, cancel and resume as before."""
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from keyprop import cli
from keyprop.core import io
from keyprop.core.api import FrameEvent, Settings, propagate
from keyprop.core.errors import KeypropInputError
from keyprop.core.filler import ShotFiller
from keyprop.core.runtime import create_engine
from keyprop.core.shot import Shot
from keyprop.core.temporal import WINDOW

H, W, N, FIRST = 80, 120, 20, 101      # frames 101-120: windows 96-103 (part), 104-111, 112-119, 120
MODEL = "preset:test"
EMPTY = 115                             # a frame whose mask is empty (passed through)


@pytest.fixture(scope="module")
def engine():
    return create_engine("torch", model=MODEL, threads=2)


def write_long_shot(root: Path, keys=()) -> Shot:
    """A textured background panning 2 px/frame with a dark bar moving 4 px/frame over it."""
    rng = np.random.default_rng(5)
    strip = cv2.GaussianBlur(rng.random((H, W + 2 * N + 8, 3)).astype(np.float32), (0, 0), 2.0)
    strip = (strip - strip.min()) / (strip.max() - strip.min())
    for i in range(N):
        f = FIRST + i
        clean = np.ascontiguousarray(strip[:, 2 * i:2 * i + W])
        mask = np.zeros((H, W), np.float32)
        if f != EMPTY:
            mask[16:64, 20 + 4 * i:30 + 4 * i] = 1.0
        plate = np.where(mask[:, :, None] > 0, np.float32(0.05), clean)
        io.write_image(root / f"plate.{f:04d}.png", plate, like=io.ImageFormat(".png", "uint8", 3))
        io.write_image(root / f"mask.{f:04d}.png", mask, like=io.ImageFormat(".png", "uint8", 1))
        if f in keys:
            io.write_image(root / f"key.{f:04d}.png", clean, like=io.ImageFormat(".png", "uint8", 3))
    return Shot(str(root / "plate.####.png"), str(root / "mask.####.png"),
                str(root / "key.####.png") if keys else "", str(root / "out" / "fill.####.png"))


def into(shot: Shot, folder: Path, first=None, last=None) -> Shot:
    folder.mkdir(exist_ok=True)
    return Shot(shot.plate, shot.mask, shot.keys, str(folder / "f.####.png"), first, last)


def outputs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def filling_threads(monkeypatch) -> set:
    """The names of the threads that call ShotFiller.fill from now on (filled in as they do)."""
    threads = set()
    fill = ShotFiller.fill

    def recording(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return fill(self, *args, **kwargs)

    monkeypatch.setattr(ShotFiller, "fill", recording)
    return threads


def run(shot, engine, workers, **kw):
    events = []
    settings = Settings(model=MODEL, parallel_windows=workers, **kw.pop("settings", {}))
    result = propagate(shot, settings, engine=engine, progress=events.append, **kw)
    return result, [e for e in events if isinstance(e, FrameEvent)]   # the setup's event left out


@pytest.mark.parametrize("keys", [(), (FIRST, 110, FIRST + N - 1)], ids=["keyless", "keyed"])
def test_parallel_windows_give_the_bytes_of_one_frame_after_another(tmp_path, engine, keys, monkeypatch):
    shot = write_long_shot(tmp_path, keys)
    one, one_events = run(into(shot, tmp_path / "one"), engine, 1)
    threads = filling_threads(monkeypatch)
    two, two_events = run(into(shot, tmp_path / "two"), engine, 2)
    assert len([t for t in threads if t.startswith("keyprop-window")]) == 2   # two windows at once
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")
    assert len(outputs(tmp_path / "two")) == N
    assert two.statuses == one.statuses and two.statuses[EMPTY] == "passthrough"
    assert all(two.statuses[k] == "keyframe" for k in keys)
    # Written and reported in frame order, every frame once.
    assert [e.frame for e in two_events] == list(range(FIRST, FIRST + N)) == two.frames
    assert [e.done for e in two_events] == list(range(1, N + 1))
    assert [e.status for e in two_events] == [e.status for e in one_events]


def test_network_fills_and_per_frame_fills_are_the_same_in_parallel(tmp_path, engine):
    """The network on every frame (the engine shared by the workers, one call at a time), and
    temporal off (no fill carried: every frame on its own)."""
    shot = write_long_shot(tmp_path, keys=(FIRST + N - 1,))
    for temporal in (True, False):
        settings = {"warp_blend": False, "temporal": temporal}
        run(into(shot, tmp_path / f"one{temporal}"), engine, 1, settings=settings)
        run(into(shot, tmp_path / f"three{temporal}"), engine, 3, settings=settings)
        assert outputs(tmp_path / f"one{temporal}") == outputs(tmp_path / f"three{temporal}")


def test_a_chunk_starting_inside_a_window_fills_its_chain_in_parallel(tmp_path, engine):
    shot = write_long_shot(tmp_path)
    run(into(shot, tmp_path / "full"), engine, 1)
    run(into(shot, tmp_path / "chunk", 106, 117), engine, 2)     # starts inside 104-111 and ends inside 112-119
    full = outputs(tmp_path / "full")
    chunk = outputs(tmp_path / "chunk")
    assert sorted(chunk) == [f"f.{f:04d}.png" for f in range(106, 118)]
    assert all(chunk[name] == full[name] for name in chunk)


def test_cancel_leaves_whole_frames_in_order_and_resume_completes(tmp_path, engine):
    shot = write_long_shot(tmp_path)
    run(into(shot, tmp_path / "full"), engine, 1)
    full = outputs(tmp_path / "full")
    cancel = threading.Event()
    events = []

    def progress(ev):
        if not isinstance(ev, FrameEvent):
            return
        events.append(ev)
        if len(events) == 3:
            cancel.set()

    part = into(shot, tmp_path / "part")
    result = propagate(part, Settings(model=MODEL, parallel_windows=2), engine=engine, progress=progress,
                       cancel=cancel)
    assert result.cancelled
    written = outputs(tmp_path / "part")   # no temporary files: only finished frames
    reported = [e.frame for e in events]
    assert reported == list(range(FIRST, FIRST + len(reported))) and 3 <= len(reported) < N
    assert sorted(written) == [f"f.{f:04d}.png" for f in reported]
    assert all(written[name] == full[name] for name in written)
    # A window started ahead was left: resuming (in parallel) completes the shot with the same bytes.
    resumed, resumed_events = run(part, engine, 2, resume=True)
    assert [e.frame for e in resumed_events] == list(range(FIRST, FIRST + N))
    assert [resumed.statuses[f] for f in reported] == ["skipped"] * len(reported)
    assert outputs(tmp_path / "part") == full


def test_resume_with_gaps_inside_windows(tmp_path, engine):
    shot = write_long_shot(tmp_path)
    run(into(shot, tmp_path / "full"), engine, 1)
    full = outputs(tmp_path / "full")
    part = into(shot, tmp_path / "part")
    run(part, engine, 2)
    for f in (106, 107, 113, 118, 120):
        (tmp_path / "part" / f"f.{f:04d}.png").unlink()
    result, _ = run(part, engine, 2, resume=True)
    assert {f for f, s in result.statuses.items() if s != "skipped"} == {106, 107, 113, 118, 120}
    assert outputs(tmp_path / "part") == full


def test_a_failed_frame_stops_the_run_after_the_frames_before_it(tmp_path, engine, monkeypatch):
    shot = write_long_shot(tmp_path)
    fill = ShotFiller.fill

    def failing(self, pixels, mask, key_frames, source_candidates=(), frame=None):
        if frame == 113:
            raise RuntimeError("boom at 113")
        return fill(self, pixels, mask, key_frames, source_candidates, frame)

    monkeypatch.setattr(ShotFiller, "fill", failing)
    with pytest.raises(RuntimeError, match="boom at 113"):
        run(into(shot, tmp_path / "out"), engine, 2)
    assert sorted(outputs(tmp_path / "out")) == [f"f.{f:04d}.png" for f in range(FIRST, 113)]


def test_windows_ahead_are_bounded(tmp_path, engine, monkeypatch):
    """No worker runs more than ``parallel_windows`` windows ahead of the frames written."""
    shot = write_long_shot(tmp_path)
    reported = [FIRST - 1]
    ahead = []
    fill = ShotFiller.fill

    def watching(self, pixels, mask, key_frames, source_candidates=(), frame=None):
        ahead.append(frame - reported[-1])
        return fill(self, pixels, mask, key_frames, source_candidates, frame)

    monkeypatch.setattr(ShotFiller, "fill", watching)
    propagate(into(shot, tmp_path / "out"), Settings(model=MODEL, parallel_windows=2), engine=engine,
              progress=lambda ev: reported.append(ev.frame) if isinstance(ev, FrameEvent) else None)
    assert max(ahead) <= 2 * WINDOW + 1, ahead


def test_parallel_windows_below_one_is_bad_input(tmp_path, engine):
    shot = write_long_shot(tmp_path)
    with pytest.raises(KeypropInputError, match="parallel_windows"):
        propagate(into(shot, tmp_path / "out"), Settings(model=MODEL, parallel_windows=0), engine=engine)
    assert not list((tmp_path / "out").iterdir())


def test_cli_flag_and_yaml_key(tmp_path, capsys):
    shot = write_long_shot(tmp_path)
    (tmp_path / "out").mkdir()
    args = ["run", "--plate", shot.plate, "--mask", shot.mask, "--out", shot.out, "--model", MODEL,
            "--progress", "json", "--threads", "2", "--frames", "101-110", "--parallel-windows", "3"]
    assert cli.main(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["frame"] for e in events if e["event"] == "frame"] == list(range(101, 111))
    job = tmp_path / "job.yaml"
    job.write_text(f"plate: {shot.plate}\nmask: {shot.mask}\nout: {tmp_path / 'yaml' / 'f.####.png'}\n"
                   f"model: {MODEL}\nframes: 101-104\nparallel_windows: 1\n")
    assert cli.main(["run", str(job)]) == 0
    assert len(list((tmp_path / "yaml").iterdir())) == 4


def test_one_thread_fills_one_window_at_a_time(tmp_path, engine, monkeypatch):
    """--threads 1 (one core) fills one window at a time, whatever parallel_windows says."""
    shot = write_long_shot(tmp_path, ())
    threads = filling_threads(monkeypatch)
    run(into(shot, tmp_path / "one"), engine, 2, settings={"threads": 1})
    assert not [t for t in threads if t.startswith("keyprop-window")]


def test_plate_frames_are_decoded_about_once_with_windows_side_by_side(engine, tmp_path, monkeypatch):
    """The window threads share one store of decoded frames: each plate frame is decoded
    about once (a frame a window needs before the window that fills it has
    read it, or after the store let it go, at most once more), keyframes once for the fills."""
    shot = write_long_shot(tmp_path, keys=(FIRST, FIRST + N - 1))
    reads, lock, real = {}, threading.Lock(), io.read_frame

    def counting(path, *args, **kwargs):
        with lock:
            reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(io, "read_frame", counting)
    for keyed in (True, False):
        reads.clear()
        s = into(shot if keyed else Shot(shot.plate, shot.mask, "", shot.out), tmp_path / f"out{keyed}")
        propagate(s, Settings(model=MODEL, parallel_windows=2, threads=2), engine=engine, overwrite=True)
        plates = {k: v for k, v in reads.items() if k.startswith("plate")}
        assert len(plates) == N and max(plates.values()) <= 2, plates
        assert sum(plates.values()) <= N + 8, plates      # was 1.5-2x N with a store per thread
        # A keyframe: once for every window's fills, once more as its own output frame.
        assert all(v <= 2 for k, v in reads.items() if k.startswith("key")), reads


def test_keyframes_are_prepared_once_for_every_window_thread(engine, tmp_path, monkeypatch):
    """The fillers of the window threads share their prepared keyframes (ShotCaches): each
    keyframe's FlowFrame is made once per run, not once per thread; the pixels are those of
    one filler per thread (the bytes test above)."""
    from keyprop.core import filler as filler_mod

    shot = write_long_shot(tmp_path, keys=(FIRST, 110, FIRST + N - 1))
    made, lock, real = [], threading.Lock(), filler_mod.ShotFiller._flow_frame

    def counting(self, rgb, hole, tag):
        if hole is None:   # a keyframe's (plate frames carry their hole)
            with lock:
                made.append(threading.current_thread().name)
        return real(self, rgb, hole, tag)

    monkeypatch.setattr(filler_mod.ShotFiller, "_flow_frame", counting)
    threads = filling_threads(monkeypatch)
    run(into(shot, tmp_path / "out"), engine, 2, settings={"threads": 2})
    assert len([t for t in threads if t.startswith("keyprop-window")]) == 2, threads
    assert len(made) == 3, made


def test_one_filler_makes_a_pair_of_frames_flows_once(engine, tmp_path, monkeypatch):
    """A filler's targets in turn share the DIS pairs of plate frames and the flows between
    adjacent ones (ShotCaches.pairs, .adjacent): kept for a filler's own targets, not only
    for its lookahead frames, so that one filler with no lookahead (--threads 1) makes each
    once, keyless (every target flows to its plate frames)."""
    from keyprop.core import filler as filler_mod

    made, lock, real_init = {}, threading.Lock(), filler_mod.ShotCaches.__init__

    def counted(name, get_or):
        def counting_get_or(key, make):
            def making():
                with lock:
                    made[name, key] = made.get((name, key), 0) + 1
                return make()

            return get_or(key, making)

        return counting_get_or

    def counting(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        for name in ("pairs", "adjacent"):
            cache = getattr(self, name)
            cache.get_or = counted(name, cache.get_or)

    monkeypatch.setattr(filler_mod.ShotCaches, "__init__", counting)
    shot = write_long_shot(tmp_path)
    run(into(shot, tmp_path / "out"), engine, 1, settings={"threads": 1})
    assert {name for name, _ in made} == {"pairs", "adjacent"}
    assert all(n == 1 for n in made.values()), {k: n for k, n in made.items() if n > 1}


def test_shared_lru_makes_each_value_once_for_threads_that_ask_together():
    """SharedLRU.get_or: callers of one key side by side get the one value the first made; a
    failed make raises in every caller waiting for it and is not kept; the size holds."""
    import time

    from keyprop.core.filler import SharedLRU

    cache, made, lock = SharedLRU(3), [], threading.Lock()

    def make(key):
        with lock:
            made.append(key)
        time.sleep(0.05)   # the other callers arrive while it is being made
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or("a", lambda: make("a")))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == ["a"] and len(got) == 4 and all(g is got[0] for g in got)

    def fail():
        time.sleep(0.05)
        raise ValueError("bad frame")

    errors = []

    def ask():
        try:
            cache.get_or("b", fail)
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["bad frame"] * 3 and cache.get("b") is None
    for key in "cdef":
        cache.get_or(key, lambda: key)
        cache[key + "2"] = key
    assert len(cache) <= cache.size == 3 and cache.get("f2") == "f"


def test_opencv_threads_per_filling_thread_and_restored(engine, tmp_path, monkeypatch):
    """While windows fill side by side, OpenCV gets the cores left to each filling thread (its
    pool serves one caller at a time and spins while idle); the count is restored after."""
    shot = write_long_shot(tmp_path, ())
    seen, real = set(), ShotFiller.fill

    def recording(self, *args, **kwargs):
        seen.add(cv2.getNumThreads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ShotFiller, "fill", recording)
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        run(into(shot, tmp_path / "two"), engine, 2, settings={"threads": 2})
        assert seen == {1} and cv2.getNumThreads() == 3
        seen.clear()
        # One frame after another: the filling thread and its two lookahead threads (core.api
        # LOOKAHEAD) share the cores too.
        run(into(shot, tmp_path / "one"), engine, 1, settings={"threads": 6})
        assert seen == {2} and cv2.getNumThreads() == 3
        seen.clear()
        run(into(shot, tmp_path / "single"), engine, 1, settings={"threads": 1})
        assert seen == {1} and cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_frame_store_shares_reads_and_stays_bounded():
    from concurrent.futures import ThreadPoolExecutor

    from keyprop.core.api import _FrameStore

    calls, lock = [], threading.Lock()

    class Raw:
        nbytes = 10

    class Plate:
        raw = Raw()

    def read(k):
        with lock:
            calls.append(k)
        if k == 13:
            raise KeypropInputError("unreadable", f"plate.{k}")
        return Plate(), None

    with ThreadPoolExecutor(max_workers=1) as reader:
        store = _FrameStore(read, reader, count=3, budget=25)   # floor 1
        assert store.load(1) is store.load(1) and calls == [1]
        store.prefetch(2)
        assert store.load(2)[0] is not None and calls == [1, 2]
        # Two threads asking at once: one read.
        with ThreadPoolExecutor(max_workers=2) as pool:
            a, b = pool.map(store.load, [3, 3])
        assert a is b and calls.count(3) == 1
        # Bounded by bytes (25: two frames of 10) and count: the oldest went.
        assert 1 not in store and 2 in store and 3 in store
        store.load(1)
        assert calls.count(1) == 2
        # A failed read raises for whoever asks and is not kept.
        for _ in range(2):
            with pytest.raises(KeypropInputError):
                store.load(13)
        assert calls.count(13) == 2 and 13 not in store


def test_two_writers_report_frames_in_order():
    import time

    from keyprop.core.api import _FrameIO

    written = []

    def write(frame, seconds):
        time.sleep(seconds)
        written.append(frame)

    frame_io = _FrameIO(writers=2)
    events = []
    try:
        # Frame 1 takes longest: 2 finishes first, but is reported after 1.
        for frame, seconds in ((1, 0.2), (2, 0.01), (3, 0.01), (4, 0.0)):
            events += frame_io.submit((write, frame, seconds), (frame,))
        events += frame_io.submit(None, (5,))
        events += frame_io.drain()
    finally:
        frame_io.close()
    assert [e[0] for e in events] == [1, 2, 3, 4, 5]
    assert written.index(2) < written.index(1) and sorted(written) == [1, 2, 3, 4]
    assert events[1][1] < events[0][1]      # each event carries its own write's end
