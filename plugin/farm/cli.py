"""`keyprop farm`: write (and submit) render-farm jobs for a shot, and the farm-side helpers.

    keyprop farm submit --engine openjd|deadline --plate P --mask P [--keys P] --out P
                        [--frames A-B] --chunk-size N --job-dir DIR [--submit | --run-local]
                        (no --keys: each frame is filled from the shot's own frames)
    keyprop farm prepare ...   # OpenJD session start: output folder, shot check, model load
    keyprop farm verify --out P --frames A-B   # the job's last step: every frame is there

Exit codes as `keyprop run`: 0 done, 2 bad input (one line on stderr), 1 a farm tool failed.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import jobs

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    farm = subparsers.add_parser("farm", help="render-farm jobs (Open Job Description, Deadline 10)")
    sub = farm.add_subparsers(dest="farm_command")

    submit = sub.add_parser("submit", help="write a shot's job files and optionally submit them")
    submit.add_argument("--engine", choices=["openjd", "deadline"], required=True,
                        help="openjd: an Open Job Description bundle (openjd-cli, AWS Deadline Cloud); "
                             "deadline: Deadline 10 CommandLine job files")
    _add_shot(submit)
    submit.add_argument("--frames", help="frame range A-B (default: the plate's frames on disk)")
    submit.add_argument("--chunk-size", type=int, default=10, dest="chunk_size",
                        help="frames per task (default 10); any size gives the same pixels")
    submit.add_argument("--job-dir", required=True, dest="job_dir", help="folder to write the job files into")
    submit.add_argument("--name", help="job name (default: the output folder's name)")
    submit.add_argument("--keyprop", help="the keyprop command on the workers (default: this keyprop)")
    _add_settings(submit)
    submit.add_argument("--dilate", type=int, default=0, help="grow the mask by PX pixels (default 0)")
    submit.add_argument("--feather", type=float, default=0.0, help="soften the fill's edge by PX pixels")
    submit.add_argument("--max-keys", type=int, default=2, dest="max_keys", help="keyframes per target (default 2)")
    submit.add_argument("--work-res", type=int, default=640, dest="work_res", help="network resolution (default 640)")
    submit.add_argument("--max-sources", type=int, default=4, dest="max_sources",
                        help="sources per target, keyframes included; plate frames fill the rest (default 4)")
    submit.add_argument("--no-plate-sources", action="store_false", dest="plate_sources",
                        help="with keyframes, use only them (plate frames still serve when keyframes are missing)")
    submit.add_argument("--linear", choices=["auto", "yes", "no"], default="auto",
                        help="plate is scene-linear (default auto: EXR/float yes)")
    submit.add_argument("--existing", choices=["overwrite", "resume"], default="overwrite",
                        help="what a task does with output frames already there (default overwrite)")
    how = submit.add_mutually_exclusive_group()
    how.add_argument("--submit", action="store_true",
                     help="submit with the engine's CLI (`deadline bundle submit` / `deadlinecommand`)")
    how.add_argument("--run-local", action="store_true", dest="run_local",
                     help="openjd only: run the whole job on this machine with `openjd run`")

    prepare = sub.add_parser("prepare", help="(job step) make the output folder, check the shot, load the model")
    _add_shot(prepare)
    prepare.add_argument("--frame", type=int, required=True,
                         help="the frame to fill as the check: a keyframe, or any frame of a shot without keys")
    prepare.add_argument("--scratch", help="folder for the check's output (default: a temporary folder)")
    _add_settings(prepare)

    verify = sub.add_parser("verify", help="(job step) check that every output frame exists")
    verify.add_argument("--out", required=True, help="output frames pattern")
    verify.add_argument("--frames", required=True, help="frame range A-B")


def _add_shot(p) -> None:
    p.add_argument("--plate", required=True, help="plate frames, e.g. plate.####.exr")
    p.add_argument("--mask", required=True, help="mask frames, white where to fill")
    p.add_argument("--keys", default="", help="clean keyframes: every frame present is a keyframe (none: each "
                   "frame is filled from the shot's own frames)")
    p.add_argument("--out", required=True, help="output frames pattern")


def _add_settings(p) -> None:
    p.add_argument("--model", default="default", help="keyprop model file (default: the shipped model)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per task (default 0: all)")


class FarmError(Exception):
    """A farm tool is missing or failed (exit 1, one line)."""


def run(args) -> int:
    """Entry from the top-level CLI; keyprop's error contract: one line on stderr, exit 2 for bad input."""
    handlers = {"submit": _submit, "prepare": _prepare, "verify": _verify}
    command = getattr(args, "farm_command", None)
    if command not in handlers:
        print("keyprop farm: no farm command given (submit, prepare or verify; try `keyprop farm --help`)",
              file=sys.stderr)
        return 2
    try:
        return handlers[command](args)
    except FarmError as exc:
        print(f"keyprop farm: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # KeypropInputError is a ValueError
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"keyprop farm: {text}", file=sys.stderr)
        return 2


# --- submit -------------------------------------------------------------------------------

def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _model_spec(model: str) -> str:
    if model in ("default", "") or model.startswith("preset:"):
        return model or "default"
    return _absolute(model)


def _default_keyprop() -> str:
    return jobs.find_tool("keyprop") or "keyprop"


def build_job(args) -> jobs.FarmJob:
    """The FarmJob of `keyprop farm submit`'s arguments, checked against the files where visible.

    Paths are made absolute here: workers do not share the submitter's working directory.
    """
    from ...core import api

    plate, mask, out = (_absolute(p) for p in (args.plate, args.mask, args.out))
    keys = _absolute(args.keys) if args.keys else ""   # none: the shot's own frames are the sources
    visible = os.path.isdir(os.path.dirname(plate))
    if args.frames:
        first, last = jobs.parse_frames(args.frames)
    elif visible:
        first, last = api.Shot(plate, mask, keys, out).frame_range()
    else:
        raise ValueError(f"{os.path.dirname(plate)}: the plate folder is not visible here; give --frames A-B")
    warmup = None
    if visible:
        Path(os.path.dirname(out)).mkdir(parents=True, exist_ok=True)
        # One-line KeypropInputError if not (a --keys pattern that matches nothing included).
        api.Shot(plate, mask, keys, out, first, last).validate(require_keys=bool(keys))
        warmup = api.scan(keys)[0] if keys else None   # None: the job's first frame
    else:
        log.warning("plate folder not visible here: the shot is checked on the farm")
    name = args.name or os.path.basename(os.path.dirname(out)) or "shot"
    return jobs.FarmJob(plate=plate, mask=mask, keys=keys, out=out, first=first, last=last,
                        chunk_size=args.chunk_size, keyprop=args.keyprop or _default_keyprop(), name=name,
                        warmup_frame=warmup, model=_model_spec(args.model), backend=args.backend,
                        device=args.device, dilate=args.dilate, feather=args.feather, max_keys=args.max_keys,
                        max_sources=args.max_sources, plate_sources=args.plate_sources, linear=args.linear,
                        work_res=args.work_res, threads=args.threads, existing=args.existing)


def _submit(args) -> int:
    if args.run_local and args.engine != "openjd":
        raise ValueError("--run-local runs Open Job Description jobs; use it with --engine openjd")
    job = build_job(args)
    job_dir = Path(args.job_dir).resolve()
    if args.engine == "openjd":
        written = jobs.write_openjd_bundle(job, job_dir)
        local = jobs.openjd_run_command(job_dir, jobs.find_tool("openjd") or "openjd")
        remote = jobs.deadline_cloud_submit_command(job_dir)
    else:
        written = jobs.write_deadline_job(job, job_dir)
        local, remote = None, jobs.deadline_submit_command(job_dir)
    n_chunks = len(jobs.chunks(job.first, job.last, job.chunk_size))
    print(f"keyprop farm: {args.engine} job for frames {job.frames} (about {n_chunks} task(s) of up to "
          f"{job.chunk_size} frame(s)) written to {job_dir}: {', '.join(p.name for p in written)}")
    if local:
        print("  run here:  " + subprocess.list2cmdline(local))
    print("  submit:    " + subprocess.list2cmdline(remote))
    if args.run_local:
        return _call(local, "openjd", "openjd-cli (pip install openjd-cli)")
    if args.submit:
        tool = "deadline" if args.engine == "openjd" else "deadlinecommand"
        return _call(remote, tool, "the AWS Deadline Cloud CLI (pip install deadline)" if tool == "deadline"
                     else "Deadline 10's deadlinecommand")
    return 0


def _call(command, tool: str, what: str) -> int:
    exe = jobs.find_tool(tool)
    if exe is None:
        raise FarmError(f"`{tool}` not found on PATH: install {what}, or use the command printed above")
    command = [exe, *command[1:]]
    log.info("running %s", subprocess.list2cmdline(command))
    code = subprocess.call(command)
    if code != 0:
        raise FarmError(f"`{tool}` exited with status {code}")
    return 0


# --- farm-side steps ------------------------------------------------------------------------

def _prepare(args) -> int:
    """Session start: the output folder exists, the shot is sound, the model loads and runs.

    With keys, ``--frame`` is a keyframe (written as is: a cheap check). Without, it is filled
    from its neighbours on its own (temporal off: not the frames before it in its window too);
    either way only into the session's scratch folder."""
    from ...core import api

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    ext = os.path.splitext(args.out)[1] or ".exr"
    with tempfile.TemporaryDirectory(prefix="keyprop-check-", dir=args.scratch) as scratch:
        shot = api.Shot(args.plate, args.mask, args.keys, os.path.join(scratch, "check.####" + ext),
                        args.frame, args.frame)
        settings = api.Settings(model=None if args.model == "default" else args.model, backend=args.backend,
                                device=args.device, threads=args.threads or None, temporal=False)
        result = api.propagate(shot, settings, overwrite=True)
    info = result.model_info
    keys = f"{len(api.scan(args.keys))} keyframe(s)" if args.keys else "no keyframes: sources from the shot's frames"
    print(f"keyprop farm: shot and model ok (model {info.get('path') or 'preset ' + str(info.get('preset'))}, "
          f"{keys}); output folder {out_dir}", flush=True)
    return 0


def _verify(args) -> int:
    from ...core import api

    first, last = jobs.parse_frames(args.frames)
    missing = [f for f in range(first, last + 1)
               if not os.path.isfile(api.expand(args.out, f)) or os.path.getsize(api.expand(args.out, f)) == 0]
    if missing:
        shown = ", ".join(str(f) for f in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{args.out}: {len(missing)} output frame(s) missing in {first}-{last}: {shown} "
                         f"(first expected file: {api.expand(args.out, missing[0])})")
    print(f"keyprop farm: all {last - first + 1} output frame(s) {first}-{last} present ({args.out})")
    return 0
