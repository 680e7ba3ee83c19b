"""Frame patterns as keyprop writes them (``plate.####.exr``, ``plate.%04d.exr``), without keyprop.

The extension may run where keyprop's core is not importable, so it carries the two
helpers it needs; tests check them against ``keyprop.core.shot``.
"""
from __future__ import annotations

import os
import re

_TOKEN = re.compile(r"%0?(\d*)d|(#+)")
_LAST_NUMBER = re.compile(r"(-?\d+)(?!.*\d)")

# What keyprop's core reads (core.io); other files go through Blender first.
KEYPROP_EXTENSIONS = (".exr", ".png", ".tif", ".tiff", ".jpg", ".jpeg")


def expand(pattern: str, frame: int) -> str:
    """The file of ``frame``: ``expand("a.####.exr", 7) == "a.0007.exr"``."""
    directory, name = os.path.split(pattern)
    match = _TOKEN.search(name)
    if match is None:
        raise ValueError(f"no frame token (#### or %04d) in {pattern!r}")
    width = len(match.group(2)) if match.group(2) else int(match.group(1) or 0)
    return os.path.join(directory, f"{name[:match.start()]}{int(frame):0{width}d}{name[match.end():]}")


def pattern_from_file(path: str) -> str:
    """``/a/plate.1001.exr`` -> ``/a/plate.####.exr`` (the last number in the file name)."""
    directory, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    match = _LAST_NUMBER.search(stem)
    if match is None:
        raise ValueError(f"no frame number in the file name {name!r}")
    digits = match.group(1).lstrip("-")
    return os.path.join(directory, f"{stem[:match.start()]}{'#' * len(digits)}{stem[match.end():]}{ext}")


def extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()
