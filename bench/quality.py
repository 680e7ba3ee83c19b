"""Quality benchmark: keyprop against three baselines on synthetic shots with ground truth.

    python bench/quality.py [--model models/default.pt] [--frames 12] [--json out.json]

Shots (core/training/shots.py, built from scikit-image pictures that training holds out):
camera pan, zoom with rotation, exposure change across the shot, film grain, two-layer
parallax, large motion; each with a moving occluder masked and clean keyframes at the
first and last frame. Every method fills the same masks of the same plates; figures are
taken over the masked pixels of the non-keyframes:

- PSNR (dB) and SSIM inside the mask, mean over frames;
- flicker: mean over consecutive frames of | mean|fill_t - fill_t-1| - mean|truth_t - truth_t-1| |
  inside the masks (x 100; 0 = the fill changes exactly as much as the true background).

Methods: keyprop (``keyprop.core.api.fill_frames`` with the given model, the same code
path as ``keyprop run``), OpenCV Telea inpainting, nearest-keyframe copy, and DIS flow warp
from the nearest keyframe with the flow completed in the hole (core.flow).

The goal the shipped model is held to: mean keyprop PSNR >= flow warp + 3 dB, and no shot
below flow warp. ``--check`` exits 1 when it is not met.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout: import keyprop

from keyprop.core import flow as flowlib  # noqa: E402
from keyprop.core.shot import plan_keyframes  # noqa: E402
from keyprop.core.training.metrics import flicker, psnr_in_mask, ssim_in_mask  # noqa: E402
from keyprop.core.training.shots import KINDS, make_shot  # noqa: E402

METHODS = ("keyprop", "flow_warp", "nearest_key", "telea")


# ------------------------------------------------------------------------ baselines


def _composite(plate, fill, mask):
    m = (mask > 0)[:, :, None]
    return np.where(m, fill, plate).astype(np.float32)


def _nearest_key(i, keys):
    return plan_keyframes(i, keys, 1)[0]


def fill_telea(frames, masks, keys):
    out = []
    for i, (f, m) in enumerate(zip(frames, masks)):
        if i in keys:
            out.append(f.copy())
            continue
        u8 = np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)
        hole = (m > 0).astype(np.uint8)
        filled = cv2.inpaint(u8, hole, 5, cv2.INPAINT_TELEA).astype(np.float32) / 255
        out.append(_composite(f, filled, m))
    return out


def fill_nearest_key(frames, masks, keys):
    return [f.copy() if i in keys else _composite(f, frames[_nearest_key(i, keys)], m)
            for i, (f, m) in enumerate(zip(frames, masks))]


def fill_flow_warp(frames, masks, keys):
    out = []
    for i, (f, m) in enumerate(zip(frames, masks)):
        if i in keys:
            out.append(f.copy())
            continue
        key = frames[_nearest_key(i, keys)]
        hole = (m > 0).astype(np.float32)
        flow, _ = flowlib.flow(f * (1 - hole[:, :, None]), key, target_mask=hole)
        out.append(_composite(f, flowlib.warp(key, flow), m))
    return out


def fill_keyprop(frames, masks, keys, engine, settings=None):
    from keyprop.core.api import fill_frames

    return fill_frames(frames, masks, keys, engine, settings)


# ------------------------------------------------------------------------ scoring


def score(shot, filled):
    targets = [i for i in range(len(shot.plates)) if i not in shot.keys]
    psnr = [psnr_in_mask(filled[i], shot.truths[i], shot.masks[i]) for i in targets]
    ssim = [ssim_in_mask(filled[i], shot.truths[i], shot.masks[i]) for i in targets]
    flick = flicker([filled[i] for i in targets], [shot.truths[i] for i in targets], [shot.masks[i] for i in targets])
    return {"psnr": float(np.nanmean(psnr)), "ssim": float(np.nanmean(ssim)), "flicker": 100 * flick}


def run_benchmark(model="default", kinds=KINDS, frames=12, size=(240, 320), seed=0, threads=1, progress=None):
    """{kind: {method: {psnr, ssim, flicker, seconds}}} for every shot kind."""
    from keyprop.core.api import Settings
    from keyprop.core.runtime import create_engine

    cv2.setNumThreads(threads)
    engine = create_engine("torch", model=model, device="cpu", threads=threads)
    settings = Settings(threads=threads)
    fills = {"keyprop": lambda fr, ms, ks: fill_keyprop(fr, ms, ks, engine, settings),
             "flow_warp": fill_flow_warp, "nearest_key": fill_nearest_key, "telea": fill_telea}
    results = {}
    for kind in kinds:
        shot = make_shot(kind, frames, size, seed)
        inputs = shot.frames_for_fill()
        results[kind] = {}
        for method in METHODS:
            start = time.time()
            filled = fills[method](inputs, shot.masks, shot.keys)
            results[kind][method] = {**score(shot, filled), "seconds": time.time() - start}
        if progress:
            progress(kind, results[kind])
    return results, engine.model_info


def summary(results):
    """Mean over shots per method, and whether keyprop meets the goal (+3 dB, no shot below)."""
    means = {m: {k: float(np.mean([r[m][k] for r in results.values()])) for k in ("psnr", "ssim", "flicker")}
             for m in METHODS}
    margin = means["keyprop"]["psnr"] - means["flow_warp"]["psnr"]
    worst = min(r["keyprop"]["psnr"] - r["flow_warp"]["psnr"] for r in results.values())
    return means, {"margin_db": margin, "worst_shot_margin_db": worst, "goal_met": bool(margin >= 3.0 and worst >= 0.0)}


def table(results):
    """A markdown table: one row per shot, PSNR / SSIM / flicker per method."""
    means, goal = summary(results)
    head = "| shot | " + " | ".join(f"{m} PSNR / SSIM / flicker" for m in METHODS) + " |"
    lines = [head, "|" + "---|" * (len(METHODS) + 1)]
    fmt = lambda r: f"{r['psnr']:.2f} / {r['ssim']:.3f} / {r['flicker']:.2f}"  # noqa: E731
    for kind, r in results.items():
        lines.append(f"| {kind} | " + " | ".join(fmt(r[m]) for m in METHODS) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{fmt(means[m])}**" for m in METHODS) + " |")
    lines.append("")
    lines.append(f"keyprop - flow_warp: {goal['margin_db']:+.2f} dB mean, {goal['worst_shot_margin_db']:+.2f} dB on "
                 f"the worst shot; goal (+3 dB, no shot below): {'met' if goal['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="keyprop .pt, 'default' (models/default.pt) or preset:NAME")
    p.add_argument("--shots", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="240x320", help="HxW of the shots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--check", action="store_true", help="exit 1 unless the +3 dB goal is met")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.shots.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"quality.py: unknown shot kind(s) {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"quality.py: --size must be HxW, got {args.size!r}", file=sys.stderr)
        return 2

    def progress(kind, r):
        print(f"{kind:13s} " + "  ".join(f"{m} {r[m]['psnr']:.2f} dB" for m in METHODS), file=sys.stderr, flush=True)

    try:
        results, info = run_benchmark(args.model, kinds, args.frames, (h, w), args.seed, args.threads, progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"quality.py: {exc}", file=sys.stderr)
        return 2
    print(f"model: {info.get('path') or args.model} (preset {info.get('preset')}, origin {info.get('origin')}); "
          f"{args.frames} frames of {w}x{h} per shot, keyframes first and last")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": info, "results": results,
                                               "summary": summary(results)[1]}, indent=2))
    return 0 if (not args.check or summary(results)[1]["goal_met"]) else 1


if __name__ == "__main__":
    sys.exit(main())
