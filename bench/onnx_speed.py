#!/usr/bin/env python3
"""Per-target-frame time: the PyTorch engine vs the ONNX Runtime engine, on CPU, in one run.

    python bench/onnx_speed.py                         # paper and small, 960x544, 2 keyframes, 2 threads
    python bench/onnx_speed.py --presets small --sizes 512x512 --repeats 5

Both engines run the same random-weight model (speed does not depend on the weights) through
the interface the pipeline calls: ``encode_keyframe`` per keyframe (timed), ``fill`` per
target (timed: median of runs, after a warm-up). The ONNX graphs are exported first into a
temporary cache (export time printed, not counted). Ratio = ORT / torch (below 1: ORT faster).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

import numpy as np
import torch

from keyprop.core.runtime import TorchEngine, load_model
from model_speed import timed  # bench/ is on sys.path when a bench script runs: one timing rule
from keyprop.export.engine import OnnxEngine


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["paper", "small"])
    p.add_argument("--sizes", nargs="+", default=["960x544"], help="WxH")
    p.add_argument("--keys", type=int, default=2, help="keyframes per target")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import onnxruntime

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
          f"{args.keys} keyframes, CPU, median of {args.repeats}")
    header = (f"{'preset':7s} {'size':>9s} {'torch fill s':>12s} {'ORT fill s':>10s} {'ratio':>6s} "
              f"{'torch key s':>11s} {'ORT key s':>9s} {'max diff':>9s} {'export s':>8s}")
    print(header)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="keyprop-onnx-bench-") as cache:
        for preset in args.presets:
            model = load_model(f"preset:{preset}")
            torch_engine = TorchEngine(model, device="cpu", threads=args.threads)
            onnx_engine = OnnxEngine(model, device="cpu", threads=args.threads, cache_dir=cache)
            for size in args.sizes:
                w, h = (int(v) for v in size.lower().split("x"))
                t = args.keys
                frames = [rng.random((4, h, w), dtype=np.float32) for _ in range(t)]
                target = rng.random((4, h, w), dtype=np.float32)
                flows = (rng.standard_normal((t, 2, h, w)) * 4).astype(np.float32)
                errs = rng.random((t, 1, h, w), dtype=np.float32)
                t0 = time.perf_counter()
                onnx_keys = [onnx_engine.encode_keyframe(f) for f in frames]
                onnx_engine.fill(target, onnx_keys, flows, errs)
                export = time.perf_counter() - t0
                torch_keys = [torch_engine.encode_keyframe(f) for f in frames]
                torch_key = timed(lambda: torch_engine.encode_keyframe(frames[0]), args.repeats)
                onnx_key = timed(lambda: onnx_engine.encode_keyframe(frames[0]), args.repeats)
                torch_fill = timed(lambda: torch_engine.fill(target, torch_keys, flows, errs), args.repeats)
                onnx_fill = timed(lambda: onnx_engine.fill(target, onnx_keys, flows, errs), args.repeats)
                diff = np.abs(torch_engine.fill(target, torch_keys, flows, errs)
                              - onnx_engine.fill(target, onnx_keys, flows, errs)).max()
                print(f"{preset:7s} {size:>9s} {torch_fill:12.3f} {onnx_fill:10.3f} {onnx_fill / torch_fill:5.2f}x "
                      f"{torch_key:11.3f} {onnx_key:9.3f} {diff:9.1e} {export:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
