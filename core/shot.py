"""Frame sequences: patterns, what is on disk, the shot, and the keyframe plan.

Patterns name one file per frame with a single frame token in the file name:

* printf style: ``plate.%04d.exr`` (zero-padded to 4), ``plate.%d.exr`` (no padding);
* hashes: ``plate.####.exr`` (one ``#`` per digit of padding).

Padding is a minimum width, as in printf: frame 12345 of ``%04d`` is ``12345``.
Negative frames are written ``-001`` (printf's ``%04d``), the same for hashes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from .errors import KeypropInputError
from . import io

__all__ = ["expand", "scan", "Shot", "plan_keyframes", "parse_pattern"]

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"%(0?)(\d*)d|(#+)")


@dataclasses.dataclass(frozen=True)
class _Pattern:
    directory: str
    prefix: str
    padding: int
    suffix: str


def parse_pattern(pattern: str | os.PathLike) -> _Pattern:
    """Split a pattern into directory, file-name prefix, padding and suffix.

    Raises:
        KeypropInputError: no frame token, more than one, or a token in the directory.
    """
    pattern = os.fspath(pattern)
    directory, name = os.path.split(pattern)
    if _TOKEN.search(directory):
        raise KeypropInputError(
            "frame token found in the directory part; put it in the file name", pattern)
    tokens = list(_TOKEN.finditer(name))
    if len(tokens) != 1:
        raise KeypropInputError(
            f"expected exactly one frame token (%04d or ####) in the file name, "
            f"found {len(tokens)}", pattern)
    token = tokens[0]
    zero, width, hashes = token.groups()
    if hashes:
        padding = len(hashes)
    elif width and not zero:
        # "%4d" pads with spaces; nobody names frames that way on purpose.
        raise KeypropInputError(
            f"'{token.group(0)}' pads with spaces; use '%0{width}d'", pattern)
    else:
        padding = int(width) if width else 0
    return _Pattern(directory, name[: token.start()], padding, name[token.end():])


def _format_frame(frame: int, padding: int) -> str:
    # printf's %0Nd counts the minus sign in the width.
    return f"{int(frame):0{padding}d}"


def expand(pattern: str | os.PathLike, frame: int) -> str:
    """The file path of ``frame`` in ``pattern``: ``expand("a.%04d.exr", 7) == "a.0007.exr"``."""
    p = parse_pattern(pattern)
    return os.path.join(p.directory, f"{p.prefix}{_format_frame(frame, p.padding)}{p.suffix}")


def scan(pattern: str | os.PathLike) -> list[int]:
    """Sorted frame numbers whose files exist for ``pattern``.

    A file counts only if expanding its frame number gives its exact name, so
    ``plate.0007.exr`` matches ``plate.####.exr`` but ``plate.07.exr`` and
    ``plate.7.exr`` do not. A missing directory gives an empty list.
    """
    p = parse_pattern(pattern)
    try:
        names = os.listdir(p.directory or ".")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise KeypropInputError(f"cannot list directory: {e.strerror or e}", p.directory) from e
    number = re.compile(re.escape(p.prefix) + r"(-?\d+)" + re.escape(p.suffix) + r"\Z")
    frames = []
    for name in names:
        m = number.match(name)
        if m and name == f"{p.prefix}{_format_frame(int(m.group(1)), p.padding)}{p.suffix}":
            frames.append(int(m.group(1)))
    return sorted(frames)


def plan_keyframes(target_frame: int, key_frames, max_keys: int) -> list[int]:
    """Which keyframes serve ``target_frame``, best first.

    The nearest keyframe before and the nearest after come first (they bracket the
    target, so together they usually see everything the mask hides), then the
    others by distance; ties go to the earlier frame. At most ``max_keys``. The
    result depends only on the arguments, so every farm chunk plans alike.

    Args:
        target_frame: the frame to fill. If it is itself a keyframe it comes first.
        key_frames: frame numbers of the keyframes (any order, duplicates ignored).
        max_keys: at least 1.

    Returns:
        Frame numbers; the selected keyframes ordered by (distance, frame).

    Raises:
        ValueError: ``max_keys < 1`` or no keyframes.
    """
    if max_keys < 1:
        raise ValueError(f"max_keys must be at least 1, got {max_keys}")
    keys = sorted(set(int(k) for k in key_frames))
    if not keys:
        raise ValueError(f"no keyframes to plan frame {target_frame} from")

    def rank(k: int) -> tuple[int, int]:
        return (abs(k - target_frame), k)

    before = [k for k in keys if k < target_frame]
    after = [k for k in keys if k > target_frame]
    chosen = [k for k in keys if k == target_frame]
    chosen += before[-1:] + after[:1]
    rest = sorted((k for k in keys if k not in chosen), key=rank)
    # The bracketing keys go in first, but the final list is ordered by distance;
    # with max_keys 1 (or 2 when the target is a key) the nearest wins.
    selected = sorted(chosen, key=rank)[:max_keys]
    selected += rest[: max_keys - len(selected)]
    return sorted(selected, key=rank)


@dataclasses.dataclass
class Shot:
    """One shot to process: input and output sequences and the frame range.

    Attributes:
        plate: pattern of the plate frames (the images to fill).
        mask: pattern of the masks, one per plate frame; white = fill.
        keys: pattern of the keyframes; every frame present on disk is a keyframe.
        out: pattern of the output frames.
        first, last: inclusive frame range; None = the plate's first/last frame on disk.
    """

    plate: str
    mask: str
    keys: str
    out: str
    first: int | None = None
    last: int | None = None

    def frame_range(self) -> tuple[int, int]:
        """Inclusive ``(first, last)``, filling unset ends from the plate on disk."""
        first, last = self.first, self.last
        if first is None or last is None:
            on_disk = scan(self.plate)
            if not on_disk:
                raise KeypropInputError("no plate frames found", self.plate)
            first = on_disk[0] if first is None else first
            last = on_disk[-1] if last is None else last
        if first > last:
            raise KeypropInputError(f"frame range {first}-{last} is empty (first > last)",
                                    self.plate)
        return first, last

    def frames(self) -> list[int]:
        first, last = self.frame_range()
        return list(range(first, last + 1))

    def key_frames(self) -> list[int]:
        """Frame numbers of the keyframes on disk."""
        return scan(self.keys)

    def validate(self, require_keys: bool = True) -> tuple[int, int]:
        """Check the shot before any work starts.

        Returns:
            ``(H, W)`` of the plate.

        Raises:
            KeypropInputError: naming the file or frame, for: output pattern equal to
            an input pattern, missing or unwritable output directory, missing plate or
            mask frames in the range, no keyframe, plate/mask/keyframe size mismatch,
            unreadable headers.
        """
        for p in (self.plate, self.mask, self.keys, self.out):
            if p or p is not self.keys:
                parse_pattern(p)
        self._check_output_distinct()
        self._check_output_directory()
        frames = self.frames()
        self._check_present(self.plate, "plate", frames)
        self._check_present(self.mask, "mask", frames)
        keys = self.key_frames() if self.keys else []
        if not keys and require_keys:
            raise KeypropInputError(
                "no keyframes found (every file matching the keys pattern is a keyframe)",
                self.keys)
        size = io.image_size(expand(self.plate, frames[0]))
        for label, pattern, numbers in (("plate", self.plate, frames),
                                        ("mask", self.mask, frames),
                                        ("keyframe", self.keys, keys)):
            for frame in numbers:
                path = expand(pattern, frame)
                got = io.image_size(path)
                if got != size:
                    raise KeypropInputError(
                        f"{label} frame {frame} is {got[1]}x{got[0]}, expected "
                        f"{size[1]}x{size[0]} like the plate", path)
        log.info("shot ok: frames %d-%d, %d keyframe(s) %s, %dx%d",
                 frames[0], frames[-1], len(keys), keys, size[1], size[0])
        return size

    def _check_output_distinct(self) -> None:
        # Compare expanded paths, so "a.%04d.exr" and "./a.####.exr" count as equal.
        for label, pattern in (("plate", self.plate), ("mask", self.mask), ("keys", self.keys)):
            if not pattern:
                continue
            for frame in (1, 1001, 123456):
                a = os.path.realpath(expand(self.out, frame))
                b = os.path.realpath(expand(pattern, frame))
                if os.path.normcase(a) == os.path.normcase(b):
                    raise KeypropInputError(
                        f"output pattern would overwrite the {label} input '{pattern}'",
                        self.out)

    def _check_output_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(expand(self.out, 0)))
        if not os.path.isdir(directory):
            raise KeypropInputError("output directory does not exist", directory)
        if not os.access(directory, os.W_OK):
            raise KeypropInputError("output directory is not writable", directory)

    @staticmethod
    def _check_present(pattern: str, label: str, frames: list[int]) -> None:
        present = set(scan(pattern))
        missing = [f for f in frames if f not in present]
        if missing:
            shown = ", ".join(str(f) for f in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise KeypropInputError(
                f"{len(missing)} {label} frame(s) missing in range {frames[0]}-{frames[-1]}: "
                f"{shown}{more} (first expected file: {expand(pattern, missing[0])})",
                pattern)
