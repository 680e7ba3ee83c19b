#!/usr/bin/env python3
"""Shot pipeline benchmarks: frames per second, the ROI saving, and memory vs shot length.

    python bench/pipeline_speed.py                     # all three, the shipped model
    python bench/pipeline_speed.py --only fps --model path/to/model.pt

fps      1080p and 4K plates with a small (<= 5 % of the area) and a large (30 %) mask.
roi      small-mask time vs the same plate processed as a full frame at plate resolution
         (what a tool without an ROI does); goal: ratio <= 0.15.
memory   peak resident memory of a 200-frame vs a 20-frame 1080p shot (separate processes);
         goal: ratio <= 1.2 (frames are streamed).
Each of fps and roi is measured two ways. "warps": as the shots come (keyframes that show
every hole pixel once warped), where the network is not run at all and the time is flows,
blending and file I/O. "network": the same shots with warp_blend off, so the network fills
every hole pixel, as it does wherever no source shows the hole (a static occluder, parallax,
no keyframes): the inference the ROI exists to shrink.
Shots are synthetic (textured, panning); plate frames beyond the first few are symlinks,
so the disk holds little while every frame is still read, filled and written.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SIZES = {"1080p": (1080, 1920), "4K": (2160, 3840)}


def make_shot(root: Path, size, frames: int, mask_fraction: float, distinct: int = 4) -> dict:
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


EXTRA = {}   # settings every run gets (--no-plate-sources)


def run(paths: dict, model: str, threads: int, frames: str, **settings) -> float:
    settings = {**EXTRA, **settings}
    model = None if model == "default" else model     # None: the shipped model
    from keyprop.core.api import Settings, propagate
    from keyprop.core.runtime import create_engine
    from keyprop.core.shot import Shot

    first, last = (int(v) for v in frames.split("-"))
    engine = create_engine("torch", model=model, threads=threads)
    shot = Shot(paths["plate"], paths["mask"], paths["keys"], paths["out"], first, last)
    t0 = time.perf_counter()
    propagate(shot, Settings(model=model, **settings), engine=engine, overwrite=True)
    return (time.perf_counter() - t0) / (last - first + 1)


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
            # A thin wire-like mask; 10 frames so per-shot work (reading every mask for the ROI,
            # encoding the two keyframes) is spread as in a real shot, not charged to 2 frames.
            paths = make_shot(Path(tmp), (h, w), 10, 0.002)
            files = file_io(paths, "1002-1009")
            for mode, extra in MODES.items():
                run(paths, args.model, args.threads, "1002-1002", **extra)
                small = run(paths, args.model, args.threads, "1002-1009", **extra)
                # Full frame: the ROI forced to the whole plate at plate resolution (with the
                # network, a few frames: one takes seconds).
                full = run(paths, args.model, args.threads, "1002-1009" if mode == "warps" else "1002-1004",
                           margin=10.0, work_res=max(h, w), **extra)
                print(f"{name:6s} {mode:8s} {small:12.2f} {full:12.2f} {small / full:6.3f} {files:10.2f}", flush=True)
    print("file I/O: decoding each plate frame and writing it back, one after the other (what any run "
          "of the shot pays whatever its ROI; the fill overlaps it on other cores)")


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
                               "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        peaks[frames] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
        print(f"{frames:4d} frames at 1080p: peak RSS {peaks[frames]:8.1f} MiB", flush=True)
    print(f"ratio 200/20: {peaks[200] / peaks[20]:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["fps", "roi", "memory"], action="append")
    p.add_argument("--model", default="default", help="model file, 'default' (the shipped model) or preset:NAME "
                   "(random weights)")
    p.add_argument("--sizes", nargs="+", default=["1080p", "4K"], choices=list(SIZES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-plate-sources", action="store_true",
                   help="keyframes only (no plate frames as extra sources), as before plate sources existed")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.no_plate_sources:
        EXTRA["plate_sources"] = False
    if args.memory_child:
        return _memory_child(args.memory_child, args.model, args.threads)
    for part in args.only or ["fps", "roi", "memory"]:
        print(f"== {part}")
        {"fps": bench_fps, "roi": bench_roi, "memory": bench_memory}[part](args)


if __name__ == "__main__":
    main()
