"""One frame after another on more than one core (core.api._FlowsAhead): lookahead threads
find the next frames' flows while the filling thread composes the current frame; the bytes
are those of one thread doing everything (--threads 1), and what they keep is dropped."""
import threading
import time

import cv2
import numpy as np
import pytest

from keyprop.core import api
from keyprop.core import filler as filler_mod
from keyprop.core import io
from keyprop.core import flow as flowlib
from keyprop.core.api import SetupEvent, Settings, propagate
from keyprop.core.runtime import create_engine
from keyprop.core.shot import Shot

from test_parallel_windows import FIRST, MODEL, N, into, outputs, write_long_shot


@pytest.fixture(scope="module")
def engine():
    return create_engine("torch", model=MODEL, threads=2)


def flows_by_thread(monkeypatch) -> dict:
    """thread name prefix -> flow_between calls, from now on."""
    counts, lock, real = {}, threading.Lock(), flowlib.flow_between

    def counting(*args, **kwargs):
        name = threading.current_thread().name.rsplit("_", 1)[0]
        with lock:
            counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(flowlib, "flow_between", counting)
    return counts


def shared_caches(monkeypatch) -> list:
    """The ShotCaches each run makes, from now on."""
    made, real = [], filler_mod.ShotCaches.__init__

    def keeping(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(filler_mod.ShotCaches, "__init__", keeping)
    return made


@pytest.mark.parametrize("keys", [(), (FIRST, 110, FIRST + N - 1)], ids=["keyless", "keyed"])
def test_lookahead_gives_the_bytes_of_one_thread(tmp_path, engine, keys, monkeypatch):
    shot = write_long_shot(tmp_path, keys)
    propagate(into(shot, tmp_path / "one"), Settings(model=MODEL, threads=1), engine=engine)
    counts = flows_by_thread(monkeypatch)
    caches = shared_caches(monkeypatch)
    events = []
    # Three cores: two lookahead threads (two: test_two_cores_have_one_lookahead_thread).
    propagate(into(shot, tmp_path / "ahead"), Settings(model=MODEL, threads=3, parallel_windows=1), engine=engine,
              progress=events.append)
    assert outputs(tmp_path / "one") == outputs(tmp_path / "ahead")
    # The setup first, with the first frame to fill (after the keyframe, keyed), then every frame.
    assert isinstance(events[0], SetupEvent) and events[0].frame == (FIRST + 1 if keys else FIRST)
    assert [e.frame for e in events[1:]] == list(range(FIRST, FIRST + N))
    # The lookahead threads found most flows; the filling thread found them made.
    assert counts.get("keyprop-ahead", 0) > 2 * counts.get("MainThread", 0), counts
    # Every target's flows were dropped when its fill ended.
    assert len(caches) == 1 and len(caches[0].flows) == 0


def test_two_cores_have_one_lookahead_thread(tmp_path, engine, monkeypatch):
    """On two cores (--threads 2) one lookahead thread finds flows beside the filling thread,
    a compute thread a core (core.api LOOKAHEAD), and hands a flow's second direction to
    core.flow's helper thread; on three, two lookahead threads. The bytes are those of one
    thread."""
    shot = write_long_shot(tmp_path, (FIRST, 110, FIRST + N - 1))
    propagate(into(shot, tmp_path / "one"), Settings(model=MODEL, threads=1), engine=engine)
    names, lock, real = set(), threading.Lock(), flowlib._dis

    def recording(*args):
        with lock:
            names.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(flowlib, "_dis", recording)
    for threads, ahead in ((2, {"keyprop-ahead_0"}), (3, {"keyprop-ahead_0", "keyprop-ahead_1"})):
        names.clear()
        out = tmp_path / f"threads{threads}"
        propagate(into(shot, out), Settings(model=MODEL, threads=threads, parallel_windows=1), engine=engine)
        assert outputs(tmp_path / "one") == outputs(out)
        assert {n for n in names if n.startswith("keyprop-ahead")} == ahead, names
        assert any(n.startswith("keyprop-flow") for n in names), names


def test_a_chunk_inside_a_window_and_a_failed_lookahead_change_nothing(tmp_path, engine, monkeypatch):
    """A chunk starting inside a window fills its chain first, as without lookahead; a
    lookahead that fails (on any thread) leaves the frame's fill to find its flows itself,
    and to raise the error if it meets it."""
    shot = write_long_shot(tmp_path)
    propagate(into(shot, tmp_path / "full"), Settings(model=MODEL, threads=1), engine=engine)
    full = outputs(tmp_path / "full")
    propagate(into(shot, tmp_path / "chunk", 106, 117), Settings(model=MODEL, threads=2, parallel_windows=1),
              engine=engine)
    chunk = outputs(tmp_path / "chunk")
    assert sorted(chunk) == [f"f.{f:04d}.png" for f in range(106, 118)]
    assert all(chunk[name] == full[name] for name in chunk)

    def failing(self, *args, **kwargs):
        raise RuntimeError("lookahead failed")

    monkeypatch.setattr(filler_mod.ShotFiller, "find_flows", failing)
    monkeypatch.setattr(filler_mod.ShotFiller, "find_pair", failing)
    propagate(into(shot, tmp_path / "out"), Settings(model=MODEL, threads=2, parallel_windows=1), engine=engine)
    assert outputs(tmp_path / "out") == full


def test_a_pair_asked_both_ways_at_once_is_flowed_once():
    """Two threads asking for one pair of plate frames, each as the target, share one DIS
    computation (SharedLRU.get_or, kept one way round), and each gets its own direction."""
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.random((64, 96, 3)).astype(np.float32)
    b = np.roll(a, 3, axis=1)
    fa, fb = flowlib.FlowFrame(a, None, 96, ("plate", 1)), flowlib.FlowFrame(b, None, 96, ("plate", 2))
    cache = filler_mod.SharedLRU(8)
    calls, lock, real = [], threading.Lock(), flowlib._dis

    def counting(*args):
        with lock:
            calls.append(1)
        return real(*args)

    flowlib._dis, got = counting, {}
    try:
        threads = [threading.Thread(target=lambda t=t, k=k: got.__setitem__(t.tag, flowlib._plain_pair(t, k, cache)))
                   for t, k in ((fa, fb), (fb, fa))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        flowlib._dis = real
    assert len(calls) == 2 and len(cache) == 1
    fwd, bwd = got[("plate", 1)]
    assert got[("plate", 2)][0] is bwd and got[("plate", 2)][1] is fwd
    plain = flowlib._plain_pair(fa, fb, None)
    assert all(np.array_equal(x, y) for x, y in zip(plain, got[("plate", 1)]))


def test_filled_frames_are_let_go_first_in_the_order_they_were_filled():
    """_FrameStore.release: a filled frame goes before any frame not filled yet, even one read
    as a source only (which goes first otherwise), and filled frames go in fill order."""
    from concurrent.futures import ThreadPoolExecutor

    from keyprop.core.api import _FrameStore

    class Plate:
        class raw:
            nbytes = 1

    with ThreadPoolExecutor(max_workers=1) as reader:
        store = _FrameStore(lambda k: (Plate(), None), reader, count=3, budget=100)
        for k in (1, 2):
            store.load(k)
        store.release(1)
        store.release(2)
        store.load(5, recent=False)   # a source read once: without releases, the first to go
        store.load(3)
        assert 1 not in store and 2 in store and 3 in store and 5 in store
        store.load(4)
        assert 2 not in store and 5 in store and 3 in store and 4 in store
        store.load(6)                 # nothing released left: the source read once goes
        assert 5 not in store and 3 in store and 4 in store and 6 in store
        store.release(99)             # a frame not kept: nothing to let go, nothing kept of it
        assert not store._released



def test_the_heap_is_trimmed_every_eighth_frame(tmp_path, engine, monkeypatch):
    """Freed frame buffers go back to the system as the run goes (core.api.trim_heap): the
    peak memory of a long shot stays that of a short one (bench/pipeline_speed.py --only memory)."""
    import platform

    from keyprop.core import api

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert api.trim_heap()
    trimmed = []
    monkeypatch.setattr(api, "trim_heap", lambda: trimmed.append(1) or True)
    shot = write_long_shot(tmp_path)
    propagate(into(shot, tmp_path / "out"), Settings(model=MODEL, threads=2), engine=engine)
    assert len(trimmed) == sum(f % api.TRIM_EVERY == 0 for f in range(FIRST, FIRST + N))


def test_tasks_take_the_first_ready_by_priority():
    """_Tasks: of the tasks not cancelled, the first by priority whose prerequisites are done;
    a task waiting for one does not hold back a ready task behind it; shutdown cancels what
    has not begun."""
    from concurrent.futures import Future

    from keyprop.core.api import _Tasks

    order, gate, prerequisite = [], threading.Event(), Future()
    tasks = _Tasks(1, "test-tasks", lambda: None)
    try:
        tasks.submit((0, 0), gate.wait)          # holds the one worker while the rest are queued
        waiting = tasks.submit((1, 0), order.append, "after", after=[prerequisite])
        late = tasks.submit((3, 0), order.append, "late")
        cancelled = tasks.submit((1, 1), order.append, "cancelled")
        first = tasks.submit((2, 0), order.append, "ready")
        assert cancelled.cancel()
        gate.set()
        first.result(timeout=10)
        late.result(timeout=10)
        assert order == ["ready", "late"] and not waiting.done()
        prerequisite.set_result(None)              # its prerequisite done: it runs
        waiting.result(timeout=10)
        assert order == ["ready", "late", "after"]
        blocked = tasks.submit((0, 0), order.append, "never", after=[Future()])
    finally:
        tasks.shutdown()
    assert blocked.cancelled() and order[-1] == "after"


def test_a_frames_search_begins_once_its_likely_flows_are_made(tmp_path, engine, monkeypatch):
    """Each frame's likely flows (to its keyframes, to the sources the latest search tried)
    are shared out to the lookahead threads one by one, and its search (find_flows) begins
    only once they are made: the search finds them made instead of holding a thread waiting
    on another's flow. The first frames guess the two nearest sources; later ones the
    latest usual search's tries. (A keyless window's first frame guesses nothing: its
    search runs in parts, the test below.)"""
    shot = write_long_shot(tmp_path)
    spans, lock = [], threading.Lock()

    def timed(name, real, frame_at):
        def run(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return real(self, *args, **kwargs)
            finally:
                if threading.current_thread().name.startswith("keyprop-ahead"):
                    with lock:
                        spans.append((name if kwargs.get("pairs") is None else "a part", args[frame_at], start,
                                      time.perf_counter()))
        return run

    # find_pair(frame, pixels, mask, source); find_flows(pixels, mask, keys, candidates, frame, carried)
    for name, frame_at in (("find_pair", 0), ("find_flows", 4)):
        monkeypatch.setattr(filler_mod.ShotFiller, name, timed(name, getattr(filler_mod.ShotFiller, name), frame_at))
    caches = shared_caches(monkeypatch)
    propagate(into(shot, tmp_path / "out"), Settings(model=MODEL, threads=2, parallel_windows=1), engine=engine)
    in_parts = {f for name, f, _, _ in spans if name == "a part"}
    searches = [(f, a) for name, f, a, _ in spans if name == "find_flows" and f not in in_parts]
    assert len(searches) > 2 and in_parts
    for frame, began in searches:
        parts = [b for name, f, _, b in spans if name == "find_pair" and f == frame]
        assert parts and all(end <= began for end in parts), frame
    assert caches[0].last_search[0] is not None and caches[0].last_search[1]


def write_slow_blob_shot(root, frames=range(101, 121)) -> Shot:
    """A still textured plate with a wide blob creeping 1 px a frame: the frames around a
    window's first frame show little of its hole, so its fill (which carries nothing from
    the frame before) runs the network; later frames take the carried fill instead."""
    rng = np.random.default_rng(11)
    clean = cv2.GaussianBlur(rng.random((80, 120, 3)).astype(np.float32), (0, 0), 2.0)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    for i, f in enumerate(frames):
        mask = np.zeros((80, 120), np.float32)
        mask[20:60, 30 + i:66 + i] = 1.0
        plate = np.where(mask[:, :, None] > 0, np.float32(0.05), clean)
        io.write_image(root / f"plate.{f:04d}.png", plate, like=io.ImageFormat(".png", "uint8", 3))
        io.write_image(root / f"mask.{f:04d}.png", mask, like=io.ImageFormat(".png", "uint8", 1))
    return Shot(str(root / "plate.####.png"), str(root / "mask.####.png"), "", str(root / "out" / "fill.####.png"))


def test_a_windows_first_frame_runs_its_network_ahead_on_a_lookahead_thread(tmp_path, engine, monkeypatch):
    """A window's first frame that wants the network (ShotFiller.network_ahead) gets its pass
    made ahead on a lookahead thread, while the frames before it are filled, and its fill
    finds it made: every pass but the run's first frame's is made there, none twice, and the
    bytes are those of one thread (which makes them all itself)."""
    shot = write_slow_blob_shot(tmp_path)
    passes, lock = [], threading.Lock()
    real_fill = type(engine).fill

    def recording(self, target, *args, **kwargs):
        with lock:
            passes.append(threading.current_thread().name.rsplit("_", 1)[0])
        return real_fill(self, target, *args, **kwargs)

    monkeypatch.setattr(type(engine), "fill", recording)
    propagate(into(shot, tmp_path / "one"), Settings(model=MODEL, threads=1), engine=engine)
    one = list(passes)
    # Windows 96-103 (the run's first frame, 101), 104-111, 112-119, 120: four first frames.
    assert one == ["MainThread"] * 4
    passes.clear()
    real_shot_fill = filler_mod.ShotFiller.fill

    def slow(self, *args, **kwargs):   # the filling thread behind: its lookahead is ahead
        time.sleep(0.05)
        return real_shot_fill(self, *args, **kwargs)

    monkeypatch.setattr(filler_mod.ShotFiller, "fill", slow)
    propagate(into(shot, tmp_path / "ahead"), Settings(model=MODEL, threads=2, parallel_windows=1), engine=engine)
    assert outputs(tmp_path / "one") == outputs(tmp_path / "ahead")
    assert sorted(passes) == ["MainThread"] + ["keyprop-ahead"] * 3


def test_a_keyless_windows_first_frame_searches_in_parts_on_the_turns_before_its_own(tmp_path, engine, monkeypatch):
    """A keyless window's first frame searches farther (ShotFiller.looks_farther): its search
    runs in parts on a lookahead thread, begun SEARCH_TURNS frames before its own turn, each
    part making PART_PAIRS of its DIS pairs. Without that, none of its flows could begin before
    the frame AHEAD_FRAMES + 1 before it is filled (its frame is queued only then, AHEAD_FRAMES
    ahead). Nothing is guessed: the flows made for it are those its search makes with one
    thread, and the bytes are those of one thread."""
    shot = write_slow_blob_shot(tmp_path)
    made, lock = [], threading.Lock()
    real_get_or = filler_mod.FlowsByTarget.get_or

    def recording(self, target, source, make):
        def timed():
            with lock:
                made.append((target, source, threading.current_thread().name, time.perf_counter()))
            return make()
        return real_get_or(self, target, source, timed)

    monkeypatch.setattr(filler_mod.FlowsByTarget, "get_or", recording)
    propagate(into(shot, tmp_path / "one"), Settings(model=MODEL, threads=1), engine=engine)
    one = [(t, s) for t, s, _, _ in made]
    made.clear()
    fill_end, real_fill = {}, filler_mod.ShotFiller.fill

    def slow(self, *args, **kwargs):   # fill(pixels, mask, keys, candidates, frame), slowed by 50 ms:
        time.sleep(0.05)                # the lookahead thread takes what is queued when it is queued
        try:
            return real_fill(self, *args, **kwargs)
        finally:
            fill_end[args[4]] = time.perf_counter()

    monkeypatch.setattr(filler_mod.ShotFiller, "fill", slow)
    propagate(into(shot, tmp_path / "ahead"), Settings(model=MODEL, threads=2, parallel_windows=1), engine=engine)
    assert outputs(tmp_path / "one") == outputs(tmp_path / "ahead")
    # Windows 104-111, 112-119 and 120 (the run's last frame).
    for start in (104, 112, 120):
        target = ("plate", start)
        assert sorted(map(repr, (s for t, s, _, _ in made if t == target))) == \
            sorted(map(repr, (s for t, s in one if t == target))), start
        queued = fill_end[start - 1 - api.AHEAD_FRAMES]   # its own turn (104's: the run's first frame, 101)
        assert [at for t, _, thread, at in made
                if t == target and thread.startswith("keyprop-ahead") and at < queued], start
