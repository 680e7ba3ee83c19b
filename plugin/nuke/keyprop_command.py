"""What the KeyProp gizmo needs that is not Nuke: keyframe lists, paths, the command, progress.

Plain Python 3.9+ with the standard library only: Nuke imports this module from the
plugin folder (as ``keyprop_command``), and keyprop's tests import it without Nuke (as
``keyprop.plugin.nuke.keyprop_command``). keyprop itself runs as a separate process in its
own environment (``keyprop run ... --progress json``); this module starts it, reads its
progress lines, and can stop it. keyprop writes each frame atomically, so a stopped run
leaves only whole frames.
"""
import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
from typing import Dict, Iterator, List, Optional, Sequence

CONFIG_NAME = "keyprop_env.json"   # written by `python install.py --nuke` beside this module
ENV_VAR = "KEYPROP_EXE"            # overrides the config: the keyprop executable to run

_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?$")


class KeypropError(Exception):
    """Something the artist must fix; the message is one line for a Nuke dialog."""


# --- keyframes and frame ranges ---------------------------------------------------------------

def parse_keyframes(text: str) -> List[int]:
    """'1001, 1024' / '1001 1024' / '1001-1010x3' -> sorted unique frame numbers.

    Items are separated by commas or blanks; an item is a frame, a range A-B, or a stepped
    range A-BxS (as Nuke writes frame ranges). Empty text gives an empty list.
    """
    frames = set()
    for item in re.split(r"[,\s]+", (text or "").strip()):
        if not item:
            continue
        match = _RANGE.match(item)
        if not match:
            raise KeypropError("keyframes: cannot read {!r} (expected frames like 1001, 1024 or 1001-1010)"
                               .format(item))
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) else 1
        if last < first or step < 1:
            raise KeypropError("keyframes: {!r} is an empty range".format(item))
        frames.update(range(first, last + 1, step))
    return sorted(frames)


def check_range(first: int, last: int, keyframes: Sequence[int]) -> None:
    """The frame range is not empty and every keyframe lies in it (keyprop reads keys from the plate's range)."""
    if first > last:
        raise KeypropError("frame range {}-{} is empty (first after last)".format(first, last))
    outside = [k for k in keyframes if not first <= k <= last]
    if outside:
        raise KeypropError("keyframe {} is outside the frame range {}-{}".format(outside[0], first, last))


def chunk_around(frame: int, first: int, last: int, size: int) -> tuple:
    """The chunk (A, B) of ``size`` frames, aligned to ``first``, that holds ``frame`` (farm renders)."""
    if not first <= frame <= last:
        raise KeypropError("frame {} is outside the frame range {}-{}".format(frame, first, last))
    size = max(1, int(size))
    start = first + (frame - first) // size * size
    return start, min(start + size - 1, last)


# --- paths ----------------------------------------------------------------------------------

def work_patterns(work_dir: str) -> Dict[str, str]:
    """Where the gizmo renders its inputs for keyprop (EXR, in the working space)."""
    work_dir = nuke_path(work_dir)
    return {"plate": work_dir + "/plate.####.exr", "mask": work_dir + "/mask.####.exr",
            "keys": work_dir + "/keys.####.exr"}


def nuke_path(path: str) -> str:
    """Forward slashes (Nuke's file knobs want them on Windows too), no trailing slash."""
    path = (path or "").replace("\\", "/")
    return path.rstrip("/") if len(path) > 1 else path


def frame_file(pattern: str, frame: int) -> str:
    """'a/fill.####.exr', 7 -> 'a/fill.0007.exr' (also %04d), like keyprop's own patterns."""
    match = re.search(r"%0?(\d*)d|(#+)", os.path.basename(pattern))
    if not match:
        raise KeypropError("{}: expected a frame token (#### or %04d) in the file name".format(pattern))
    width = len(match.group(2)) if match.group(2) else int(match.group(1) or 0)
    head = pattern[:len(pattern) - len(os.path.basename(pattern))]
    name = os.path.basename(pattern)
    return head + name[:match.start()] + "{:0{}d}".format(frame, width) + name[match.end():]


def missing_frames(pattern: str, frames: Sequence[int]) -> List[int]:
    return [f for f in frames if not os.path.isfile(frame_file(pattern, f))]


# --- the keyprop executable ----------------------------------------------------------------------

def find_keyprop(here: Optional[str] = None, environ: Optional[dict] = None) -> str:
    """The keyprop executable: $KEYPROP_EXE, else keyprop_env.json beside this module (install.py)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR):
        return environ[ENV_VAR]
    config = os.path.join(here or os.path.dirname(os.path.abspath(__file__)), CONFIG_NAME)
    try:
        with open(config) as f:
            exe = json.load(f).get("keyprop")
    except (OSError, ValueError):
        exe = None
    if not exe:
        raise KeypropError("keyprop is not set up for Nuke: run `python install.py --nuke` in keyprop's folder "
                           "(or set {} to keyprop's executable)".format(ENV_VAR))
    if not os.path.exists(exe):
        raise KeypropError("keyprop executable {} (from {}) does not exist: run `python install.py --nuke` again"
                           .format(exe, config))
    return exe


def build_run_command(keyprop: str, plate: str, mask: str, keys: str, out: str, first: int, last: int,
                      model: str = "default", device: str = "auto", dilate: int = 0, feather: float = 0.0,
                      existing: str = "resume", extra: Sequence[str] = ()) -> List[str]:
    """The `keyprop run` command line for the gizmo's settings (a list: no shell, no quoting)."""
    if existing not in ("resume", "overwrite"):
        raise KeypropError("existing output: expected resume or overwrite, got {!r}".format(existing))
    return [keyprop, "run", "--plate", plate, "--mask", mask, "--keys", keys, "--out", out,
            "--frames", "{}-{}".format(first, last), "--model", model or "default", "--device", device,
            "--dilate", str(int(dilate)), "--feather", str(float(feather)), "--progress", "json",
            "--" + existing] + list(extra)


# --- progress ---------------------------------------------------------------------------------

def parse_progress_line(line: str) -> Optional[dict]:
    """One line of `keyprop run --progress json` stdout -> its event, or None for anything else."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def progress_message(event: dict) -> str:
    if event.get("event") == "done":
        return "done: {} frame(s)".format(event.get("frames"))
    if event.get("event") == "setup":
        return "set up in {:.1f}s, filling {} frame(s)".format(float(event.get("seconds") or 0), event.get("total"))
    return "frame {} {} ({}/{})".format(event.get("frame"), event.get("status"), event.get("done"),
                                        event.get("total"))


def percent(event: dict) -> int:
    if event.get("event") == "done":
        return 100
    total = max(int(event.get("total") or 1), 1)
    return int(100 * int(event.get("done") or 0) / total)


def error_line(stderr_text: str) -> str:
    """keyprop's one-line message (the last non-empty stderr line), for a dialog."""
    lines = [line.strip() for line in (stderr_text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "keyprop failed without a message"


class KeypropRun:
    """A running `keyprop run`: iterate its progress events, stop it, read how it ended.

        run = KeypropRun(command)
        for event in run.events():      # blocks between frames
            if cancelled(): run.cancel()
        run.wait()                      # raises KeypropError with keyprop's line on failure
    """

    def __init__(self, command: List[str], env: Optional[dict] = None):
        self.command = list(command)
        self.cancelled = False
        creation = {}
        if os.name == "nt":  # no console window over Nuke
            creation["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        # Nuke's own Python variables must not leak into keyprop's environment.
        env = dict(os.environ if env is None else env)
        for name in ("PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        self._stderr = tempfile.TemporaryFile(mode="w+")
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=self._stderr,
                                            universal_newlines=True, bufsize=1, env=env, **creation)
        except OSError as exc:
            self._stderr.close()
            raise KeypropError("cannot start keyprop ({}): {}".format(self.command[0], exc.strerror or exc))

    def events(self) -> Iterator[dict]:
        for line in self.process.stdout:
            event = parse_progress_line(line)
            if event is not None:
                yield event

    def cancel(self) -> None:
        """Stop keyprop now. Frames already written stay whole (keyprop renames finished files)."""
        self.cancelled = True
        if self.process.poll() is None:
            if os.name == "nt":
                self.process.terminate()
            else:
                self.process.send_signal(signal.SIGINT)  # keyprop stops between frames
                try:
                    self.process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self.process.terminate()

    def wait(self) -> int:
        """Exit status; 130 when cancelled. Raises KeypropError with keyprop's message when it failed."""
        code = self.process.wait()
        self.process.stdout.close()
        self._stderr.seek(0)
        stderr = self._stderr.read()
        self._stderr.close()
        if self.cancelled or code in (130, -signal.SIGINT, -signal.SIGTERM):
            return 130
        if code != 0:
            raise KeypropError(error_line(stderr))
        return 0


def follow(run: KeypropRun, on_event, is_cancelled, poll: float = 0.2) -> int:
    """Feed ``run``'s events to ``on_event`` until it ends; stop it once ``is_cancelled()`` says so.

    Returns the exit status (130 when cancelled); raises KeypropError when keyprop failed.
    Progress lines are read on a helper thread so that a cancel is seen within ``poll``
    seconds, not only between frames.
    """
    events = queue.Queue()
    idle = object()

    def read():
        try:
            for event in run.events():
                events.put(event)
        finally:
            events.put(None)

    reader = threading.Thread(target=read, name="keyprop-progress", daemon=True)
    reader.start()
    while True:
        try:
            event = events.get(timeout=poll)
        except queue.Empty:
            event = idle
        if event is None:
            break
        if event is not idle:
            on_event(event)
        if not run.cancelled and is_cancelled():
            run.cancel()
    reader.join()
    return run.wait()
