"""`keyprop run` and `keyprop demo`: the shot pipeline from the command line.

    keyprop run --plate P --mask P --keys P --out P [--frames A-B] [--model M] ...
    keyprop run job.yaml            # the same settings as keys of a YAML mapping

Exit codes: 0 done, 2 bad input (one line on stderr), 130 stopped by Ctrl-C (whole frames
kept), 1 anything else.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Union

import yaml

from .api import ETA_WINDOW, FrameEvent, SetupEvent, Settings, eta_seconds, propagate
from .temporal import WINDOW
from .errors import KeypropInputError
from .shot import Shot, expand, scan

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "samples" / "shot"

RUN_KEYS = {"plate", "mask", "keys", "out", "frames", "progress", "resume", "overwrite", "mkdir"}


def add_parsers(sub) -> None:
    run = sub.add_parser("run", help="fill a shot's masked regions (from clean keyframes when given, "
                                     "else from the shot's own frames)")
    run.add_argument("job", nargs="?", help="a job YAML with the same settings as the flags (flags win)")
    run.add_argument("--plate", help="plate frames, e.g. plate.%%04d.exr or plate.####.exr")
    run.add_argument("--mask", help="mask frames, white where to fill")
    run.add_argument("--keys", help="clean keyframes: every frame present is a keyframe (none: the shot's own "
                     "frames serve as sources)")
    run.add_argument("--out", help="output frames pattern (its folder is made if missing, see --no-mkdir)")
    _add_common(run)
    demo = sub.add_parser("demo", help="fill the bundled sample shot with the default model")
    demo.add_argument("--out", default="keyprop_demo", help="output folder (default: ./keyprop_demo)")
    _add_common(demo)


def _add_common(p) -> None:
    p.add_argument("--frames", help="frame range A-B (inclusive; one frame: A or A-A)")
    p.add_argument("--model", help="keyprop model file (default: the shipped model)")
    p.add_argument("--backend", choices=["torch", "onnx"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dilate", type=int, help="grow the mask by PX pixels (default 0)")
    p.add_argument("--feather", type=float, help="soften the fill's edge by PX pixels (default 0)")
    p.add_argument("--max-keys", type=int, dest="max_keys", help="keyframes per target (default 2)")
    p.add_argument("--max-sources", type=int, dest="max_sources",
                   help="sources per target, keyframes included; plate frames fill the rest (default 4)")
    p.add_argument("--no-plate-sources", action="store_false", dest="plate_sources", default=None,
                   help="with keyframes, use only them (plate frames still serve when keyframes are missing)")
    p.add_argument("--work-res", type=int, dest="work_res", help="network resolution, ROI long side (default 640)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("--parallel-windows", type=int, dest="parallel_windows", metavar="N",
                   help="temporal windows (8 frames) filled side by side, the same pixels (default 1: one "
                        "frame after another, the next frames' flows found ahead on other threads)")
    p.add_argument("--linear", choices=["auto", "yes", "no"], help="plate is scene-linear (default: EXR/float yes)")
    p.add_argument("--progress", choices=["bar", "json", "none"], help="default: bar on a terminal, else none")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", default=None, help="keep finished output frames")
    mode.add_argument("--overwrite", action="store_true", default=None, help="replace existing output frames")
    p.add_argument("--no-mkdir", action="store_false", dest="mkdir", default=None,
                   help="fail if the output folder does not exist (by default it is made, and the run says so)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")


def parse_frames(text) -> tuple:
    """'A-B', 'A' -> (A, B). Negative frame numbers are allowed ('-5--1')."""
    text = str(text).strip()
    try:
        if "-" in text[1:]:
            cut = text.index("-", 1)
            first, last = int(text[:cut]), int(text[cut + 1:])
        else:
            first = last = int(text)
    except ValueError:
        raise KeypropInputError(f"--frames {text!r}: expected A-B (e.g. 1001-1100) or one frame") from None
    if first > last:
        raise KeypropInputError(f"--frames {text!r}: first frame after last")
    return first, last


def _job_values(args) -> dict:
    """Settings from the YAML job (if any), overridden by flags given on the command line."""
    values = {}
    if getattr(args, "job", None):
        path = Path(args.job)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise KeypropInputError(f"cannot read the job file ({exc.strerror})", path) from None
        except yaml.YAMLError as exc:
            raise KeypropInputError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
        if not isinstance(data, dict):
            raise KeypropInputError("a job file must be a mapping of settings", path)
        base = path.parent
        for key in ("plate", "mask", "keys", "out", "model"):  # relative paths are relative to the job file
            value = data.get(key)
            if isinstance(value, str) and value not in ("default",) and not value.startswith("preset:") \
                    and not os.path.isabs(value):
                data[key] = str(base / value)
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    for key, value in vars(args).items():
        if key in ("job", "command", "verbose", "version") or value is None:
            continue
        values[key] = value
    return values


def _settings_and_shot(values: dict):
    run = {k: values.pop(k) for k in list(values) if k in RUN_KEYS}
    linear = values.pop("linear", None)
    if linear is not None and not isinstance(linear, bool):
        linear = {"auto": None, "yes": True, "no": False}[linear]
    settings = Settings.from_mapping({**values, "linear": linear})
    missing = [k for k in ("plate", "mask", "out") if not run.get(k)]
    if missing:
        raise KeypropInputError(f"missing {', '.join('--' + m for m in missing)} (or the same keys in a job YAML)")
    first = last = None
    if run.get("frames") is not None:
        first, last = parse_frames(run["frames"])
    shot = Shot(str(run["plate"]), str(run["mask"]), str(run.get("keys") or ""), str(run["out"]), first, last)
    return settings, shot, run


class ProgressPrinter:
    """'bar': one updating line on stderr with frames, the frame's seconds and the ETA;
    'json': a JSON line per frame on stdout.

    The run's setup (core.api.SetupEvent) comes first: a JSON line ``{"event": "setup", ...}``,
    or the bar at 0 frames with the setup's seconds. The ETA is :func:`core.api.eta_seconds`
    over the frames worked on (not 'skipped' ones; the setup is not a frame).
    A bar line is ended (``end_line``) before anything else is written to its stream: the
    summary, an error, the Ctrl-C message, log records (``guard_logging``).
    """

    def __init__(self, mode: str, stream_bar=None, stream_json=None, parallel_windows: int = 1):
        # Streams are looked up now, not at import: hosts and tests swap sys.stdout/stderr.
        self.mode = mode
        # Windows filled side by side report in bursts: the ETA's rate is taken over rounds
        # of them (core.api.eta_seconds' block).
        self.block = WINDOW * parallel_windows if parallel_windows > 1 else 1
        self.bar_out = stream_bar or sys.stderr
        self.json_out = stream_json or sys.stdout
        self.times = []          # seconds of the frames worked on
        self.open = False        # a bar line is on bar_out without its newline

    def eta(self, ev: FrameEvent) -> float:
        if ev.status != "skipped":
            self.times.append(ev.seconds)
        return eta_seconds(self.times, ev.total - ev.done, window=3 if self.block > 1 else ETA_WINDOW,
                           block=self.block)

    def __call__(self, ev: Union[SetupEvent, FrameEvent]) -> None:
        if isinstance(ev, SetupEvent):
            self.setup(ev)
            return
        eta = self.eta(ev)
        if self.mode == "json":
            record = {"event": "frame", "frame": ev.frame, "status": ev.status, "done": ev.done,
                      "total": ev.total, "seconds": round(ev.seconds, 3), "eta": round(eta, 1), "path": ev.path}
            print(json.dumps(record), file=self.json_out, flush=True)
        elif self.mode == "bar":
            width = 30
            filled = int(width * ev.done / max(ev.total, 1))
            line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {ev.done}/{ev.total} frames  "
                    f"frame {ev.frame} {ev.status:11s} {ev.seconds:5.1f}s  ETA {eta:5.0f}s")
            print(line, end="", file=self.bar_out, flush=True)
            self.open = True
            if ev.done >= ev.total:
                self.end_line()

    def setup(self, ev: SetupEvent) -> None:
        if self.mode == "json":
            record = {"event": "setup", "seconds": round(ev.seconds, 3), "total": ev.total, "frame": ev.frame}
            print(json.dumps(record), file=self.json_out, flush=True)
        elif self.mode == "bar":
            print(f"\r[{'.' * 30}] 0/{ev.total} frames  set up in {ev.seconds:.1f}s", end="", file=self.bar_out,
                  flush=True)
            self.open = True

    def end_line(self) -> bool:
        """End the bar's line if one is open (idempotent); whether one was."""
        if not self.open:
            return False
        self.open = False
        print(file=self.bar_out, flush=True)
        return True

    finish = end_line

    @contextlib.contextmanager
    def guard_logging(self):
        """While inside, log records for handlers writing to the bar's stream end its line first."""
        printer = self

        class EndBarLine(logging.Filter):
            def filter(self, record):
                printer.end_line()
                return True

        guard = EndBarLine()
        handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is self.bar_out]
        for handler in handlers:
            handler.addFilter(guard)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(guard)


def _check_keys_given(shot: Shot) -> None:
    """A --keys pattern that matches no file is a mistake (a typo, a wrong folder), not "no keyframes".

    Without the check the run fills from the shot's own frames: much slower and worse, and
    exit code 0. Leaving --keys out is how to ask for that.
    """
    if shot.keys and not scan(shot.keys):
        raise KeypropInputError("--keys matches no file (check the pattern and its folder; leave --keys out "
                                "to fill from the shot's own frames)", shot.keys)


def _make_output_folder(shot: Shot, allowed) -> list:
    """Make the output pattern's folder if it is missing; the folders made, deepest first.

    Blender, Nuke and farm jobs make their output folders, so `keyprop run` does too (and
    says so); ``allowed`` False (--no-mkdir, ``mkdir: false``) leaves the check to the shot's
    validation, which refuses a missing folder.
    """
    folder = os.path.dirname(os.path.abspath(expand(shot.out, 0)))
    if os.path.isdir(folder) or allowed is False:
        return []
    made, missing = [], folder
    while missing and not os.path.isdir(missing):
        made.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(folder)
    except OSError as exc:
        raise KeypropInputError(f"cannot make the output folder ({exc.strerror or exc})", folder) from None
    print(f"keyprop: made the output folder {folder} (--no-mkdir: fail instead)", file=sys.stderr, flush=True)
    return made


def _remove_empty(folders: list) -> None:
    """Take back folders this run made when it ended on bad input before writing anything."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def run_shot(values: dict, verbose: bool = False) -> int:
    settings, shot, run = _settings_and_shot(values)
    shot.frame_range()  # no plate at all says so first (before --keys, before making a folder)
    _check_keys_given(shot)
    made = _make_output_folder(shot, run.get("mkdir"))
    try:
        return _run(settings, shot, run)
    except (ValueError, FileNotFoundError):  # bad input (exit 2): no empty folder left behind
        _remove_empty(made)
        raise


def _run(settings, shot: Shot, run: dict) -> int:
    mode = run.get("progress") or ("bar" if sys.stderr.isatty() else "none")
    printer = ProgressPrinter(mode, parallel_windows=int(settings.parallel_windows))
    cancel = threading.Event()

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        # On a line of its own: after the bar's, or after the terminal's ^C.
        print(("" if printer.end_line() else "\n") + "keyprop: stopping after the current frame "
              "(Ctrl-C again to abort now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        with printer.guard_logging():
            result = propagate(shot, settings, progress=printer, cancel=cancel, resume=bool(run.get("resume")),
                               overwrite=bool(run.get("overwrite")))
    finally:
        printer.end_line()   # the summary, or the error, starts on a line of its own
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    info = result.model_info
    model_name = info.get("path") or "preset " + str(info.get("preset"))
    summary = {"event": "done", "frames": len(result.frames), "cancelled": result.cancelled,
               "model": model_name, "model_hash": info.get("hash"), "preset": info.get("preset"),
               "runs_on": info.get("runs_on"),
               "filled": sum(s == "filled" for s in result.statuses.values()),
               "passthrough": sum(s == "passthrough" for s in result.statuses.values()),
               "inpainted": sum(s == "inpainted" for s in result.statuses.values())}
    if mode == "json":
        print(json.dumps(summary), flush=True)
    else:
        roi = result.roi
        where = f", ROI {roi.width}x{roi.height} at {roi.work_w}x{roi.work_h}" if roi else ""
        runs_on = f" on {info['runs_on']}" if info.get("runs_on") else ""
        print(f"keyprop: {summary['frames']} frame(s) written to {os.path.dirname(shot.out) or '.'} with model "
              f"{model_name} ({info.get('preset')}, {info.get('origin')}){runs_on}{where}"
              + (" - stopped early" if result.cancelled else ""), file=sys.stderr)
    if summary["inpainted"]:
        print(f"keyprop: {summary['inpainted']} frame(s) had no keyframe and no other frame to draw from: "
              "filled from their own context (image inpainting)", file=sys.stderr)
    if summary["passthrough"]:
        print(f"keyprop: {summary['passthrough']} frame(s) had an empty mask and were passed through",
              file=sys.stderr)
    return 130 if result.cancelled else 0


def run_command(args) -> int:
    if args.command == "demo":
        # Like `run`: the folder is made when missing, and existing frames are kept unless
        # --resume or --overwrite says what to do with them.
        out_dir = Path(args.out)
        values = _job_values(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "out"}))
        values.update(plate=str(SAMPLE_DIR / "plate.####.png"), mask=str(SAMPLE_DIR / "mask.####.png"),
                      keys=str(SAMPLE_DIR / "keys.####.png"), out=str(out_dir / "fill.####.png"))
        return run_shot(values, args.verbose)
    return run_shot(_job_values(args), args.verbose)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="keyprop: %(message)s")


def main_guarded(args) -> int:
    """Run with keyprop's error contract: one line on stderr, exit 2 for bad input."""
    configure_logging(getattr(args, "verbose", False))
    try:
        return run_command(args)
    except KeypropInputError as exc:
        print(f"keyprop: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"keyprop: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keyprop: aborted", file=sys.stderr)
        return 130
