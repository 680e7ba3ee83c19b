"""Job files for existing render-farm engines: Open Job Description and Deadline 10.

keyprop ships no scheduler. A shot becomes one job whose tasks are chunks of frames, each
chunk one `keyprop run --frames A-B`; every chunk gives the pixels of a single run over the
whole shot, so the engine may split, retry and reorder chunks as it likes. A job without
keyframes (``keys`` empty) fills each frame from the shot's own frames, chunked the same way.

Plain functions of a :class:`FarmJob`; nothing here talks to a farm (cli.py does).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

# One parser for --frames everywhere: the farm splits exactly what `keyprop run` accepts.
from ...core.run_cli import parse_frames  # noqa: F401  (re-exported for cli.py)

TEMPLATE = Path(__file__).resolve().parent / "templates" / "keyprop_openjd.yaml"

# The files a job folder holds, per engine. The OpenJD folder is a Deadline Cloud job bundle
# (template + parameter_values + asset_references) plus the parameters in the form
# openjd-cli reads (`openjd run template.yaml -p file://openjd-params.json`).
OPENJD_TEMPLATE = "template.yaml"
OPENJD_BUNDLE_VALUES = "parameter_values.yaml"
OPENJD_ASSETS = "asset_references.yaml"
OPENJD_PARAMS = "openjd-params.json"
DEADLINE_JOB_INFO = "keyprop_job_info.job"
DEADLINE_PLUGIN_INFO = "keyprop_plugin_info.job"


@dataclass
class FarmJob:
    """One shot as a farm job. Paths are as the workers see them (absolute)."""

    plate: str
    mask: str
    keys: str                    # "" = no keyframes: each frame is filled from the shot's own frames
    out: str
    first: int
    last: int
    chunk_size: int = 10
    keyprop: str = "keyprop"     # the keyprop command on the workers
    name: str = "shot"
    warmup_frame: Optional[int] = None   # a keyframe; None = the first frame
    model: str = "default"
    backend: str = "torch"
    device: str = "auto"
    dilate: int = 0
    feather: float = 0.0
    max_keys: int = 2
    max_sources: int = 4         # sources per target, keyframes included
    plate_sources: bool = True   # False: with keyframes, only them (`--no-plate-sources`)
    linear: str = "auto"         # 'auto', 'yes' or 'no' (`--linear`)
    work_res: int = 640
    threads: int = 0             # 0 = all cores of the worker
    existing: str = "overwrite"  # or 'resume': what a (re)run task does with finished frames

    def __post_init__(self):
        if self.first > self.last:
            raise ValueError(f"frame range {self.first}-{self.last} is empty (first after last)")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size {self.chunk_size}: expected 1 or more frames per task")
        if self.existing not in ("overwrite", "resume"):
            raise ValueError(f"existing outputs: expected overwrite or resume, got {self.existing!r}")
        if self.linear not in ("auto", "yes", "no"):
            raise ValueError(f"--linear: expected auto, yes or no, got {self.linear!r}")
        if self.max_sources < 1:
            raise ValueError(f"--max-sources {self.max_sources}: expected 1 or more")

    @property
    def frames(self) -> str:
        return f"{self.first}-{self.last}"




def chunks(first: int, last: int, size: int) -> List[tuple]:
    """Contiguous (A, B) ranges of at most ``size`` frames covering first..last (Deadline's split)."""
    return [(a, min(a + size - 1, last)) for a in range(first, last + 1, size)]


def run_arguments(job: FarmJob, frames: str) -> List[str]:
    """The `keyprop run` arguments (after the executable) for one chunk; ``frames`` is 'A-B' or tokens.

    Without keys there is no ``--keys``; ``--no-plate-sources`` only when asked for. (The
    OpenJD template, whose arguments are fixed, passes ``--keys ""`` and the plate-sources
    setting in a settings file instead: the same run.)
    """
    return ["run", "--plate", job.plate, "--mask", job.mask, *(["--keys", job.keys] if job.keys else []),
            "--out", job.out, "--frames", frames, "--model", job.model, "--backend", job.backend,
            "--device", job.device, "--dilate", str(job.dilate), "--feather", str(job.feather),
            "--max-keys", str(job.max_keys), "--max-sources", str(job.max_sources),
            *([] if job.plate_sources else ["--no-plate-sources"]), "--linear", job.linear,
            "--work-res", str(job.work_res), "--threads", str(job.threads), "--progress", "json",
            f"--{job.existing}"]


# --- Open Job Description ---------------------------------------------------------------------

def openjd_parameter_values(job: FarmJob) -> Dict[str, object]:
    """Job parameter values for the template, by the template's parameter names."""
    return {
        "ShotName": job.name, "Keyprop": job.keyprop,
        "Plate": job.plate, "Mask": job.mask, "Keys": job.keys, "Out": job.out,
        "OutputDir": os.path.dirname(job.out) or ".",
        "Frames": job.frames, "ChunkSize": job.chunk_size,
        "WarmupFrame": job.first if job.warmup_frame is None else job.warmup_frame,
        "Model": job.model, "Backend": job.backend, "Device": job.device,
        "Dilate": job.dilate, "Feather": float(job.feather), "MaxKeys": job.max_keys,
        "MaxSources": job.max_sources, "PlateSources": "true" if job.plate_sources else "false",
        "Linear": job.linear, "WorkRes": job.work_res, "Threads": job.threads, "ExistingOutput": job.existing,
    }


def openjd_asset_references(job: FarmJob) -> dict:
    """Deadline Cloud job attachments: the input folders to send, the output folder to bring back.

    Farms whose storage profile marks these folders as shared skip the transfer.
    """
    inputs = sorted({os.path.dirname(p) or "." for p in (job.plate, job.mask, job.keys) if p})
    if job.model not in ("default",) and not job.model.startswith("preset:"):
        model_file = [job.model]
    else:
        model_file = []
    return {"assetReferences": {
        "inputs": {"directories": inputs, "filenames": model_file},
        "outputs": {"directories": [os.path.dirname(job.out) or "."]},
    }}


def write_openjd_bundle(job: FarmJob, job_dir: Path) -> List[Path]:
    """Write the template (unchanged) and the shot's parameter values into ``job_dir``."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    values = openjd_parameter_values(job)
    written = [job_dir / OPENJD_TEMPLATE, job_dir / OPENJD_BUNDLE_VALUES, job_dir / OPENJD_ASSETS,
               job_dir / OPENJD_PARAMS]
    shutil.copyfile(TEMPLATE, written[0])
    bundle_values = {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}
    written[1].write_text(yaml.safe_dump(bundle_values, sort_keys=False))
    written[2].write_text(yaml.safe_dump(openjd_asset_references(job), sort_keys=False))
    written[3].write_text(json.dumps(values, indent=2) + "\n")
    return written


def openjd_run_command(job_dir: Path, openjd: str = "openjd", extra: Optional[List[str]] = None) -> List[str]:
    """`openjd run` of the whole job (every chunk of Fill, then Verify) on this machine."""
    job_dir = Path(job_dir)
    return [openjd, "run", str(job_dir / OPENJD_TEMPLATE), "-p", f"file://{job_dir / OPENJD_PARAMS}",
            *(extra or [])]


def deadline_cloud_submit_command(job_dir: Path, deadline: str = "deadline") -> List[str]:
    return [deadline, "bundle", "submit", "--yes", str(job_dir)]


# --- Deadline 10 (CommandLine plugin) ---------------------------------------------------------

def _deadline_quote(arg: str) -> str:
    """Quote one argument for the CommandLine plugin's Arguments line (a command-line string).

    The plugin starts the executable without a shell (ShellExecute=False), so only blanks and
    quotes need care; <STARTFRAME>/<ENDFRAME> are replaced by Deadline before the split.
    """
    if arg and not any(c in arg for c in ' \t"'):
        return arg
    return '"' + arg.replace('"', '\\"') + '"'


def deadline_job_info(job: FarmJob) -> str:
    """The job info file: the CommandLine plugin over the frame range, `chunk_size` frames per task."""
    out_dir, out_name = os.path.split(job.out)
    lines = [
        "Plugin=CommandLine",
        f"Name=keyprop {job.name}",
        "Comment=keyprop: fill masked regions from " + ("clean keyframes" if job.keys else "the shot's own frames"),
        f"Frames={job.frames}",
        f"ChunkSize={job.chunk_size}",
        f"OutputDirectory0={out_dir}",
        f"OutputFilename0={out_name.replace('%04d', '####')}",
    ]
    return "\n".join(lines) + "\n"


def deadline_plugin_info(job: FarmJob) -> str:
    """The plugin info file: `keyprop run --frames <STARTFRAME>-<ENDFRAME>` for each task."""
    args = run_arguments(job, "<STARTFRAME>-<ENDFRAME>")
    lines = [
        f"Executable={job.keyprop}",
        "Arguments=" + " ".join(_deadline_quote(a) for a in args),
        "Shell=default",
        "ShellExecute=False",
        "SingleFramesOnly=False",
        "StartupDirectory=",
    ]
    return "\n".join(lines) + "\n"


def write_deadline_job(job: FarmJob, job_dir: Path) -> List[Path]:
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    job_info, plugin_info = job_dir / DEADLINE_JOB_INFO, job_dir / DEADLINE_PLUGIN_INFO
    job_info.write_text(deadline_job_info(job))
    plugin_info.write_text(deadline_plugin_info(job))
    return [job_info, plugin_info]


def deadline_submit_command(job_dir: Path, deadlinecommand: str = "deadlinecommand") -> List[str]:
    job_dir = Path(job_dir)
    return [deadlinecommand, str(job_dir / DEADLINE_JOB_INFO), str(job_dir / DEADLINE_PLUGIN_INFO)]


# --- finding tools --------------------------------------------------------------------------

def find_tool(name: str) -> Optional[str]:
    """``name`` on PATH, or beside this Python (keyprop's own environment need not be on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / (name + (".exe" if os.name == "nt" else ""))
    return str(beside) if beside.exists() else None

