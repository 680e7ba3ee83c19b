"""Temporal propagation: a frame's fill is carried to the next frame along the flow.

What a moving occluder hides in frame t was mostly also hidden in frame t-1, where it has
just been filled. Offering that fill to frame t as one more source (warped along the flow
t -> t-1, weighed like any other source by :mod:`keyprop.core.fusion`) keeps the fill of
consecutive frames consistent (no flicker where the sources change from one frame to the
next) and lets what frame t-1 resolved (from a source that only it could reach) carry on.

Farm chunks must give the bytes of a full run, so the dependency is defined on the inputs
alone: frames are grouped into fixed windows of WINDOW frames on absolute frame numbers
(0-7, 8-15, ...; negative numbers too), and a frame's fill is carried only to the next frame
of its window. Frame t's fill therefore depends on the fills of the frames just before it in
its window (a *chain*, broken by a frame that is not filled: a keyframe, an empty mask, a
missing frame). A run that starts inside a window (a chunk, a resumed run) first fills the
chain before its first frame, without writing it (:func:`chain`): at most WINDOW - 1 frames.
"""
from __future__ import annotations

from typing import Callable, List

__all__ = ["WINDOW", "window_start", "same_window", "chain"]

# Frames per window: longer windows carry a fill further (steadier), and cost a chunk that
# starts inside one up to WINDOW - 1 extra fills.
WINDOW = 8


def window_start(frame: int, window: int = WINDOW) -> int:
    """The first frame of ``frame``'s window (floor division: -1 is in window -8..-1)."""
    return frame - frame % window


def same_window(a: int, b: int, window: int = WINDOW) -> bool:
    return a // window == b // window


def chain(frame: int, is_filled: Callable[[int], bool], window: int = WINDOW) -> List[int]:
    """The frames whose fills ``frame``'s fill depends on, oldest first: the run of frames just
    before it, in its window, for which ``is_filled(f)`` (the frame is filled by the pipeline,
    not a keyframe or passed through) holds."""
    out = []
    f = frame - 1
    while f >= window_start(frame, window) and is_filled(f):
        out.append(f)
        f -= 1
    return out[::-1]
