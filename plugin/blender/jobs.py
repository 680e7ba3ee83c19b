"""Run keyprop for Blender: in-process through ``core.api``, or ``keyprop run`` as a worker.

No ``bpy`` here and no keyprop import at module level: this file also loads when the
extension is installed alone in Blender, where keyprop (and torch) are not importable.
The worker is keyprop's own command in keyprop's own environment, reporting one JSON line
per frame (``--progress json``); the in-process path calls the same ``propagate``. Both
read and write the same files, so they give the same pixels.

A job reports plain dicts, the CLI's JSON records plus one final record::

    {"event": "setup", "seconds": 0.6, "total": 10, "frame": 1001}   (once, before the frames)
    {"event": "frame", "frame": 1003, "status": "filled", "done": 3, "total": 10, "path": ...}
    {"event": "finished", "state": "done" | "cancelled" | "error", "message": "..."}
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from typing import List, Optional

log = logging.getLogger(__name__)

CONFIG_NAME = "keyprop_env.json"  # written beside this file by `install.py --blender`


@dataclasses.dataclass
class JobSpec:
    """One `keyprop run`: the CLI's flags, by the CLI's names."""

    plate: str
    mask: str
    keys: str
    out: str
    frame_start: Optional[int] = None   # None: the plate's first frame on disk
    frame_end: Optional[int] = None
    model: str = ""                     # "" = the shipped model; a .pt path or 'preset:NAME'
    backend: str = "torch"
    device: str = "auto"
    dilate: int = 0
    feather: float = 0.0
    max_keys: int = 2
    work_res: int = 640
    threads: int = 0                    # 0 = all cores
    resume: bool = False
    overwrite: bool = False

    def frames_text(self) -> Optional[str]:
        if self.frame_start is None or self.frame_end is None:
            return None
        return f"{self.frame_start}-{self.frame_end}"

    def cli_args(self) -> List[str]:
        """Arguments after `keyprop run` (without --progress)."""
        args = ["--plate", self.plate, "--mask", self.mask, "--keys", self.keys, "--out", self.out]
        if self.frames_text():
            args += ["--frames", self.frames_text()]
        if self.model:
            args += ["--model", self.model]
        args += ["--backend", self.backend, "--device", self.device, "--dilate", str(self.dilate),
                 "--feather", repr(float(self.feather)), "--max-keys", str(self.max_keys),
                 "--work-res", str(self.work_res)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.resume:
            args.append("--resume")
        elif self.overwrite:
            args.append("--overwrite")
        return args

    def settings_mapping(self) -> dict:
        """Keyword arguments of ``core.api.Settings``: what the CLI builds from the same flags."""
        return dict(model=self.model or None, backend=self.backend, device=self.device, dilate=self.dilate,
                    feather=float(self.feather), max_keys=self.max_keys, work_res=self.work_res,
                    threads=self.threads or None)


# --- where keyprop is --------------------------------------------------------------------------

def in_process_available() -> bool:
    """Whether keyprop's core imports in this Python (Blender started inside keyprop's env)."""
    try:
        return importlib.util.find_spec("keyprop.core.api") is not None
    except (ImportError, ValueError):
        return False


def read_config(directory: Optional[str] = None) -> dict:
    """``keyprop_env.json`` beside the add-on: {"python": ..., "keyprop": ...}, or {}."""
    path = os.path.join(directory or os.path.dirname(os.path.abspath(__file__)), CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def worker_command(python: str = "") -> Optional[List[str]]:
    """The command that runs `keyprop` in keyprop's environment, or None when none is known.

    ``python`` (the add-on preference) wins, then $KEYPROP_PYTHON, then the installer's
    config, then `keyprop` on PATH, then this Python when keyprop imports in it.
    """
    config = read_config()
    python = python or os.environ.get("KEYPROP_PYTHON", "") or config.get("python", "")
    if python:
        return [python, "-m", "keyprop.cli"]
    exe = config.get("keyprop") or shutil.which("keyprop")
    if exe:
        return [exe]
    if in_process_available() and os.path.basename(sys.executable).lower().startswith("python"):
        return [sys.executable, "-m", "keyprop.cli"]
    return None


def choose_mode(preference: str, python: str = "") -> str:
    """'in_process' or 'worker' for the preference 'AUTO', 'IN_PROCESS' or 'WORKER'."""
    if preference == "IN_PROCESS" or (preference == "AUTO" and in_process_available()):
        return "in_process"
    return "worker"


# --- jobs ----------------------------------------------------------------------------------------

class Job:
    """A running propagate; the caller polls ``events()`` from Blender's main thread."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self.queue: "queue.Queue[dict]" = queue.Queue()
        self.state = "running"   # then 'done', 'cancelled' or 'error'
        self.message = ""
        self.done = 0
        self.total = 0
        self.paths: List[str] = []

    def events(self, timeout: Optional[float] = None) -> List[dict]:
        """Events since the last call (waits up to ``timeout`` for the first one)."""
        out = []
        try:
            out.append(self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait())
            while True:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        for ev in out:
            if ev.get("event") == "frame":
                self.done, self.total = ev["done"], ev["total"]
                self.paths.append(ev.get("path", ""))
            elif ev.get("event") == "finished":
                self.state, self.message = ev["state"], ev.get("message", "")
        return out

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def wait(self, on_event=None, poll: float = 0.2) -> str:
        """Block until the job ends; Ctrl-C cancels it and still waits for the current frame."""
        while not self.finished:
            try:
                for ev in self.events(timeout=poll):
                    if on_event:
                        on_event(ev)
            except KeyboardInterrupt:
                self.cancel()
        return self.state

    def cancel(self) -> None:
        raise NotImplementedError


class InProcessJob(Job):
    """``core.api.propagate`` in a thread of this process (never touches bpy)."""

    def __init__(self, spec: JobSpec):
        super().__init__(spec)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyprop-propagate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self) -> None:
        try:
            from keyprop.core.api import Settings, SetupEvent, propagate
            from keyprop.core.errors import KeypropInputError
            from keyprop.core.shot import Shot
        except Exception as exc:  # keyprop half-installed: say so in one line
            self.queue.put({"event": "finished", "state": "error",
                            "message": f"keyprop: cannot import keyprop's core ({exc})"})
            return
        s = self.spec
        try:
            shot = Shot(s.plate, s.mask, s.keys, s.out, s.frame_start, s.frame_end)
            settings = Settings.from_mapping(s.settings_mapping())

            def progress(ev):
                if isinstance(ev, SetupEvent):
                    self.queue.put({"event": "setup", "seconds": round(ev.seconds, 3), "total": ev.total,
                                    "frame": ev.frame})
                    return
                self.queue.put({"event": "frame", "frame": ev.frame, "status": ev.status, "done": ev.done,
                                "total": ev.total, "seconds": round(ev.seconds, 3), "path": ev.path})

            result = propagate(shot, settings, progress=progress, cancel=self._cancel, resume=s.resume,
                               overwrite=s.overwrite)
            state = "cancelled" if result.cancelled else "done"
            self.queue.put({"event": "finished", "state": state, "message": ""})
        except (KeypropInputError, ValueError, FileNotFoundError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.queue.put({"event": "finished", "state": "error", "message": f"keyprop: {text}"})
        except Exception as exc:  # a bug: one line for the artist, the traceback in the log
            log.exception("keyprop: propagate failed")
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.queue.put({"event": "finished", "state": "error",
                            "message": f"keyprop: {type(exc).__name__}: {first}"})


class WorkerJob(Job):
    """`keyprop run --progress json` in keyprop's environment, read line by line."""

    def __init__(self, spec: JobSpec, command: List[str]):
        super().__init__(spec)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # a terminal's Ctrl-C reaches Blender, which forwards it once
        argv = list(command) + ["run"] + spec.cli_args() + ["--progress", "json"]
        log.info("keyprop worker: %s", " ".join(argv))
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         encoding="utf-8", errors="replace", env=env, **kwargs)
        except OSError as exc:
            self.proc = None
            self.queue.put({"event": "finished", "state": "error",
                            "message": f"keyprop: cannot start the worker {argv[0]} ({exc.strerror or exc})"})
            return
        self._stderr: List[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()
        threading.Thread(target=self._wait, daemon=True).start()

    def cancel(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if os.name == "nt":
            # No SIGINT across process groups on Windows; frames are written atomically,
            # so stopping mid-frame still leaves only whole frames.
            self.proc.terminate()
        else:
            os.kill(self.proc.pid, signal.SIGINT)  # the CLI stops after the current frame

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") in ("setup", "frame"):
                self.queue.put(record)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())
                log.info("%s", line.rstrip())

    def _wait(self) -> None:
        rc = self.proc.wait()
        for t in self._readers:
            t.join()
        if rc == 0:
            self.queue.put({"event": "finished", "state": "done", "message": ""})
        elif rc == 130:
            self.queue.put({"event": "finished", "state": "cancelled", "message": ""})
        else:
            said = [line for line in self._stderr if line.startswith("keyprop")] or self._stderr
            message = said[-1] if said else f"keyprop: the worker stopped with exit code {rc}"
            if not message.startswith("keyprop"):
                message = f"keyprop: {message.strip()}"
            self.queue.put({"event": "finished", "state": "error", "message": message})


def start(spec: JobSpec, mode: str, python: str = "") -> Job:
    """Start a job in 'in_process' or 'worker' mode (see :func:`choose_mode`)."""
    if mode == "in_process":
        return InProcessJob(spec)
    command = worker_command(python)
    if command is None:
        job = Job(spec)
        job.queue.put({"event": "finished", "state": "error",
                       "message": "keyprop: keyprop's environment not found; run `python install.py --blender` "
                                  "or set the keyprop Python in the add-on preferences"})
        return job
    return WorkerJob(spec, command)
