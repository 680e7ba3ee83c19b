#!/usr/bin/env python3
"""Per-target-frame time of the network: uncached (what the published code does) vs cached.

    python bench/model_speed.py                      # paper preset, 256², 512², 960x544, 2 keyframes
    python bench/model_speed.py --presets paper small --sizes 960x544

"uncached" runs ``forward(input, srcs, flows, flow_errs)`` on the model as loaded:
keyframes encoded and run through the first n_cross blocks for every target, as the
authors' generator does. "cached" is what keyprop's engine runs: keyframes encoded once
(timed separately), ``fill`` per target, on ``prepare_for_inference(model)`` (BatchNorm
folded, channels_last); "cached plain" is the cache alone, without those rewrites.
Random weights: speed does not depend on their values. Prints a table (median of runs).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from keyprop.core.model import create_model, prepare_for_inference


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["paper"])
    p.add_argument("--sizes", nargs="+", default=["256x256", "512x512", "960x544"], help="WxH")
    p.add_argument("--keys", type=int, default=2, help="keyframes per target")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-uncached", action="store_true", help="skip the slow uncached path")
    return p.parse_args(argv)


def timed(fn, repeats):
    fn()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.keys} keyframes, median of {args.repeats}")
    print(f"{'preset':7s} {'size':>9s} {'uncached s':>11s} {'cached plain s':>14s} {'cached s':>9s} "
          f"{'speed-up':>8s} {'encode keys s':>13s}")
    for preset in args.presets:
        model = create_model(preset)
        fast = prepare_for_inference(model)
        for size in args.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            t = args.keys
            x, srcs = torch.rand(1, 4, h, w), torch.rand(1, t, 4, h, w)
            flows, errs = torch.randn(1, t, 2, h, w) * 4, torch.rand(1, t, 1, h, w)
            with torch.inference_mode():
                uncached = float("nan") if args.no_uncached else timed(lambda: model(x, srcs, flows, errs),
                                                                       args.repeats)
                cache = model.encode_keyframes(srcs)
                plain = timed(lambda: model.fill(x, cache, flows, errs), args.repeats)
                encode = timed(lambda: fast.encode_keyframes(srcs), args.repeats)
                cache = fast.encode_keyframes(srcs)
                cached = timed(lambda: fast.fill(x, cache, flows, errs), args.repeats)
            print(f"{preset:7s} {size:>9s} {uncached:11.3f} {plain:14.3f} {cached:9.3f} {uncached / cached:7.2f}x "
                  f"{encode:13.3f}", flush=True)


if __name__ == "__main__":
    main()
