"""The shot pipeline: ``propagate(shot, settings)`` fills a shot's masked regions (from its
keyframes, or from its own frames when it has none).

This module runs a shot: it checks the inputs, plans the ROI over the whole plate range,
streams frames (read ahead, fill, write behind), keeps the temporal chain whole for a run
that starts inside a window (core.temporal), reports progress and honours cancel. Frames
of different temporal windows do not depend on each other: ``Settings.parallel_windows``
windows are filled side by side, each by its own ShotFiller on a worker thread (the pixels
of one frame after another), and written and reported in frame order. What happens to one
frame is :class:`core.filler.ShotFiller`'s; the pixel decisions live in core.fusion (which
source fills where), core.composite (gradient-domain solve, composite) and core.temporal
(fills carried from frame to frame).

Pixels where the (dilated, feathered) mask is 0 are the plate's, bit for bit; alpha and
other channels pass through. Outputs are written to a temporary name and renamed.

Hosts call :func:`propagate` (files) or :func:`fill_frames` (arrays in memory).
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import color, io
from . import flow as flowlib
from .io import cv2  # OpenCV as core.io imports it (its EXR codec enabled first)
from .composite import composite_alpha, network_hole
from .errors import KeypropInputError
from .filler import SOURCE_OFFSETS, ShotCaches, ShotFiller, rgb3, source_candidates
from .roi import ROI, mask_bbox, plan_roi, union_bbox
from .settings import Settings
from .shot import Shot, expand, plan_keyframes, scan
from .temporal import chain, same_window

__all__ = ["Settings", "FrameEvent", "SetupEvent", "Result", "eta_seconds", "ShotFiller", "propagate", "fill_frames",
           "source_candidates", "composite_alpha", "network_hole", "Shot", "expand", "scan", "plan_keyframes"]

log = logging.getLogger(__name__)


# --- progress -----------------------------------------------------------------------------

@dataclass
class FrameEvent:
    """One frame written (or skipped).

    ``seconds``: wall time from the previous frame's completion (the end of the setup, for
    the first frame: see SetupEvent) to this frame's file being written; the setup's and the
    frames' seconds add up to the run's wall time, none counted twice. Frames
    are read ahead and written behind, so a frame's event can arrive after the next
    frame's fill, but its seconds stop when its own write did.
    """
    frame: int
    status: str          # 'filled', 'keyframe', 'passthrough' (empty mask), 'skipped' (resume)
    done: int
    total: int
    seconds: float
    path: str = ""


@dataclass
class SetupEvent:
    """The run's setup, reported once, before any frame's event.

    ``seconds``: wall time from the run's start to the start of the first frame's composing:
    the model load (when propagate makes the engine), the mask scan, the first reads and,
    one frame after another, the first frame the run fills made ready: the frames before it
    in its temporal window filled (a chunk starting inside a window: their fills are carried
    to it) and its flows found. Every later frame finds its flows found ahead, while the
    frame before it was composed; the first has no frame before it, so finding its flows is
    the pipeline's start, not that frame's share. The setup's and the frames' seconds add up
    to the run's wall time. ``frame``: the first frame the run fills (None: none to fill).
    """
    total: int
    seconds: float
    frame: Optional[int] = None


ProgressFn = Callable[[Union[SetupEvent, FrameEvent]], None]

ETA_WINDOW = 8   # frames: the ETA's rate is the median of this many recent per-frame times


def eta_seconds(recent: Sequence[float], left: int, window: int = ETA_WINDOW, block: int = 1) -> float:
    """Seconds left for ``left`` frames at a robust recent rate: the median of the last
    ``window`` per-frame times, the lower middle one for an even count (one slow or fast
    frame does not move it, not even among two; a lasting change of pace does within
    ``window // 2`` frames). 0 with no times or nothing left.

    ``block`` > 1: the times come in bursts (``parallel_windows`` windows filled side by side
    are reported in frame order: a window finished ahead arrives all at once, its frames a few
    milliseconds apart). The rate is then the median of the mean times of the last ``window``
    blocks of ``block`` consecutive frames (the mean of all of them before a block is full);
    a block spanning one round of windows averages the burst out."""
    times = list(recent)
    if left <= 0 or not times:
        return 0.0
    if block <= 1:
        return statistics.median_low(times[-window:]) * left
    n = min(window, len(times) // block)
    if n == 0:
        return sum(times) / len(times) * left
    tail = times[len(times) - n * block:]
    means = [sum(tail[i * block:(i + 1) * block]) / block for i in range(n)]
    return statistics.median_low(means) * left


@dataclass
class Result:
    frames: List[int] = field(default_factory=list)
    statuses: Dict[int, str] = field(default_factory=dict)
    cancelled: bool = False
    model_info: Dict = field(default_factory=dict)
    roi: Optional[ROI] = None


# --- files ----------------------------------------------------------------------------------

def shot_roi(bbox, size, settings: Settings, stride: int) -> ROI:
    """The ROI around the union of a shot's mask boxes, grown by what dilate/feather reach
    (plus the network hole's 2 px) so every pixel the composite can touch is inside it."""
    grow = settings.dilate + int(np.ceil(2.5 * settings.feather)) + 2
    bbox = (max(0, bbox[0] - grow), max(0, bbox[1] - grow), min(size[0], bbox[2] + grow),
            min(size[1], bbox[3] + grow))
    return plan_roi(bbox, size, settings.work_res, stride, settings.margin)


# Masks read while the ROI is planned are kept (the part inside their own bounding box, as
# float) for the frames the run will use, up to this many bytes: the per-frame pass then
# does not decode them again. Beyond it they are read again (memory stays bounded).
MASK_KEEP_BYTES = 64 << 20


def _mask_box(path: str, frame: int, size):
    """(bbox, mask inside bbox) of one mask file, checked against the plate ``size``."""
    mask = io.read_mask(path)
    if mask.shape != tuple(size):
        raise KeypropInputError(f"mask frame {frame} is {mask.shape[1]}x{mask.shape[0]}, expected "
                                f"{size[1]}x{size[0]} like the plate", path)
    if (mask > 0).all():
        raise KeypropInputError(f"mask frame {frame} covers the whole frame: nothing is left to align "
                                "the keyframes to", path)
    bbox = mask_bbox(mask)
    return bbox, (mask[bbox[0]:bbox[2], bbox[1]:bbox[3]].copy() if bbox else None)


def _shot_roi(shot: Shot, frames_all: Sequence[int], size, engine, settings: Settings,
              keep: Optional[Dict[int, tuple]] = None, keep_frames=()) -> Optional[ROI]:
    """The ROI of the whole plate range (not just this chunk): chunks must agree.

    Masks are decoded two at a time (codecs release the GIL); the first bad one in frame
    order is the error reported. ``keep``: filled with frame -> (bbox, mask inside bbox)
    for frames in ``keep_frames`` while MASK_KEEP_BYTES allows.
    """
    from concurrent.futures import ThreadPoolExecutor

    boxes, kept_bytes = [], 0
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keyprop-scan")
    try:
        scans = pool.map(lambda f: _mask_box(expand(shot.mask, f), f, size), frames_all)
        for frame, (bbox, crop) in zip(frames_all, scans):
            boxes.append(bbox)
            if keep is not None and frame in keep_frames:
                if crop is None or kept_bytes + crop.nbytes <= MASK_KEEP_BYTES:
                    keep[frame] = (bbox, crop)
                    kept_bytes += 0 if crop is None else crop.nbytes
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # after a bad mask, the rest are not read
    bbox = union_bbox(boxes)
    if bbox is None:
        return None
    return shot_roi(bbox, size, settings, engine.stride)


def _match_channels(pixels: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Keyframe pixels shaped like the plate's: plate alpha/extra channels where the key lacks them."""
    if pixels.shape[2] == like.shape[2]:
        return pixels
    if like.shape[2] == 1:
        return pixels[:, :, :3].mean(axis=2, keepdims=True)
    out = like.copy()
    out[:, :, :3] = rgb3(pixels)
    return out


def propagate(shot: Shot, settings: Optional[Settings] = None, engine=None,
              progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
              resume: bool = False, overwrite: bool = False) -> Result:
    """Fill every frame of ``shot`` in its range; write ``shot.out`` frames.

    Raises KeypropInputError (one line naming the file or frame) for bad input before any
    output is written where it can be detected up front (patterns, missing frames, sizes,
    unreadable masks, no keyframe, existing outputs). ``cancel`` (an Event) stops between
    frames; finished frames stay. ``resume`` keeps existing output frames; ``overwrite``
    replaces them; with neither, existing outputs are an error. Frames are written and
    reported in frame order, also when ``settings.parallel_windows`` windows are filled
    side by side (a frame filled ahead is discarded when the run stops before it).
    """
    started = time.perf_counter()   # the first frame's seconds count from here (see FrameEvent)
    from .runtime import create_engine

    settings = settings or Settings()
    if int(settings.parallel_windows) < 1:
        raise KeypropInputError(f"parallel_windows is {settings.parallel_windows}: at least 1 (1 = one frame "
                                "after the other)")
    size = shot.validate(require_keys=False)
    frames = shot.frames()
    key_frames = shot.key_frames() if shot.keys else []
    plate_frames = scan(shot.plate)
    plate_set = set(plate_frames)
    stray = [k for k in key_frames if k not in plate_set]
    if stray:
        raise KeypropInputError(f"keyframe {stray[0]} has no plate frame (plate frames {plate_frames[0]}-"
                                f"{plate_frames[-1]})", expand(shot.keys, stray[0]))
    extra = [m for m in scan(shot.mask) if m not in plate_set]
    if extra:
        raise KeypropInputError(f"mask frame {extra[0]} has no plate frame: mask and plate sequences differ",
                                expand(shot.mask, extra[0]))
    existing = [f for f in frames if os.path.exists(expand(shot.out, f))]
    if existing and not (resume or overwrite):
        raise KeypropInputError(f"{len(existing)} output frame(s) exist already (first: frame {existing[0]}); "
                                "use --resume to keep them or --overwrite to replace them",
                                expand(shot.out, existing[0]))
    if engine is None:
        engine = create_engine(settings.backend, settings.model, settings.device, settings.threads)
    mask_frames = [f for f in plate_frames if os.path.exists(expand(shot.mask, f))]
    kept_masks: Dict[int, tuple] = {}   # frame -> (bbox, mask inside it), from the ROI scan
    reach = max(abs(d) for d in SOURCE_OFFSETS)
    # Two frames encode side by side unless the run is held to one thread.
    frame_io = _FrameIO(readers=int(settings.parallel_windows), writers=1 if settings.threads == 1 else 2)
    def key_plan(k):
        """The keyframes that serve frame ``k`` (none in a shot without keyframes)."""
        return plan_keyframes(k, key_frames, settings.max_keys) if key_frames else []

    def written(f):
        """Whether frame ``f``'s output is kept from an earlier run (``resume``)."""
        return resume and os.path.exists(expand(shot.out, f))

    try:
        # While the masks are scanned, the reader decodes what the first frame needs: its
        # plate and its keyframes (each is taken from here once, then read as usual).
        ahead = {("plate", frames[0]): frame_io.reader.submit(io.read_frame, expand(shot.plate, frames[0]))}
        for k in key_plan(frames[0]):
            ahead[("key", k)] = frame_io.reader.submit(io.read_frame, expand(shot.keys, k))
        roi = _shot_roi(shot, mask_frames, size, engine, settings, kept_masks,
                        range(frames[0] - reach, frames[-1] + reach + 1))
        result = Result(model_info=dict(engine.model_info), roi=roi)
        if roi is None:
            log.warning("every mask of the shot is empty: frames pass through unchanged")

        def read_ahead(kind, k, path):
            """A frame decoded ahead (taken once), else read now."""
            future = ahead.pop((kind, k), None)
            return future.result() if future is not None else io.read_frame(path)

        first = ahead[("plate", frames[0])].result()   # stays for the first frame's read
        linear = settings.linear if settings.linear is not None else color.is_linear_by_default(first.format)
        if not key_frames:
            log.warning("no keyframes: filling from the shot's own frames (at most %d sources per frame)",
                        settings.max_sources)

        box = (roi.y0, roi.y1, roi.x0, roi.x1) if roi else (0, size[0], 0, size[1])

        def read(k):
            return read_ahead("plate", k, expand(shot.plate, k)), read_mask_roi(k)

        def read_mask_roi(k):
            """The mask's ROI crop by read_mask's rule (whole-frame), kept from the scan if it was."""
            if k in kept_masks:
                bbox, crop = kept_masks[k]
                mask = np.zeros((box[1] - box[0], box[3] - box[2]), np.float32)
                if bbox is not None:
                    mask[bbox[0] - box[0]:bbox[2] - box[0], bbox[1] - box[2]:bbox[3] - box[2]] = crop
                return mask
            mask_path = expand(shot.mask, k)
            return io.read_mask(mask_path)[box[0]:box[1], box[2]:box[3]] if os.path.exists(mask_path) else None

        plate_with_masks = set(mask_frames)
        keys_set = set(key_frames)
        # What every filling thread's filler shares: keyframes prepared once (the windows start
        # together and want the same keyframes: the second waits for the first's, which reads
        # the keyframe's file then), plate frames prepared and the flows between them.
        # Threads that fill or look ahead (their fillers share the caches, their loaders the store).
        windows_n = int(settings.parallel_windows)
        cores = int(settings.threads or os.cpu_count() or 1)
        lookahead = min(LOOKAHEAD, cores - 1) if windows_n == 1 and cores > 1 else 0
        ahead_frames = AHEAD_FRAMES if lookahead else 0
        shared = ShotCaches(settings, windows_n, ahead_frames)
        # Decoded frames kept for every filling thread: 6 per thread at most, beyond 4 per
        # thread (the frames around its target, as each thread kept before) only within 320 MB
        # (4K 8-bit: 25 MB a frame; 4K float RGBA: 133 MB); the lookahead's targets are up to
        # AHEAD_FRAMES past the filling thread's: 3 more each within the budget, 2 more for each
        # lookahead thread whatever their size.
        store = _FrameStore(read, frame_io.reader, count=6 * windows_n + 3 * ahead_frames, budget=320 << 20,
                            floor=4 * windows_n + 2 * lookahead)

        def new_filler(engine=engine):
            """A ShotFiller (None without an ROI) with its own frame loader: one per thread
            that fills (a filler's caches and carried fill are its own)."""
            loader = _Loader(store, plate_with_masks, box)
            if roi is None:
                return None, loader
            return ShotFiller(engine, roi, settings, linear,
                              key_loader=key_crop,
                              source_loader=loader.candidate, shared=shared, source_frames=plate_with_masks), loader

        def key_crop(k):
            """Keyframe ``k``'s ROI crop (read when ShotCaches prepares it: once for every thread)."""
            return read_ahead("key", k, expand(shot.keys, k)).region(*box)

        def is_filled(k):
            """Whether frame ``k`` is one the pipeline fills (on the inputs alone, not the range)."""
            if k not in plate_with_masks or k in keys_set:
                return False
            mask = read_mask_roi(k)
            return mask is not None and bool((mask > 0).any())

        def fill_one(filler, loader, k, ahead=None):
            pixels, mask = loader.source(k)
            if ahead is not None:
                ahead.help(filler, pixels, mask, k)
            return filler.fill(pixels, mask, key_plan(k), source_candidates(k, plate_with_masks), k)

        def fill_before(filler, loader, frame):
            """A run starting inside a temporal window (a chunk, a resumed run, a window handed
            to a worker) first fills the frames before ``frame`` in its window (not written):
            their fills are carried to it as they are in a full run."""
            if settings.temporal and filler.previous_frame != frame - 1:
                for earlier in chain(frame, is_filled):
                    fill_one(filler, loader, earlier)

        def fill_frame(filler, loader, frame, ahead=None):
            """One frame that is not a keyframe: (status, plate Frame, filled ROI or None)."""
            plate, mask = loader.load(frame)
            if filler is None or not (mask > 0).any():
                log.info("frame %d: empty mask, plate passed through", frame)
                return "passthrough", plate, None
            fill_before(filler, loader, frame)
            status = "filled" if key_plan(frame) or source_candidates(frame, plate_with_masks) else "inpainted"
            if status == "inpainted":
                log.warning("frame %d: no keyframe and no other frame: filled from its own context", frame)
            return status, plate, fill_one(filler, loader, frame, ahead)

        # No more windows side by side than threads allowed (--threads 1: one core, one window).
        workers = min(int(settings.parallel_windows), int(settings.threads or settings.parallel_windows)) \
            if roi is not None else 1
        # OpenCV's own threads: the cores left to each computing thread (window workers, or
        # the filling thread and its lookahead threads). Its pool serves one caller at a time
        # (another caller runs alone) and its idle workers spin: with two windows on two cores
        # and a pool of two, single frames of 176x144 shots stalled for 0.2-0.4 s against 0.1 s
        # (bench/pipeline_speed.py --only real). Same pixels either way.
        cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(max(1, cores // (workers + lookahead)))
        if workers > 1:
            # Windows filled side by side (_WindowFills); the workers' fillers share the engine
            # behind a lock (engines need not be thread-safe). This thread reads keyframes' plates.
            locked = _LockedEngine(engine)
            windows = _WindowFills(workers, lambda: new_filler(locked), fill_frame)
            plan_frames = windows.plan(frames, written, keys_set)
            filler, loader = None, _Loader(store, plate_with_masks, box)
        else:
            windows = None
            # The lookahead threads' fillers run a window's first frame's network ahead: they
            # share the engine with this thread's behind a lock too.
            locked = _LockedEngine(engine) if lookahead else engine
            filler, loader = new_filler(locked)
        # One frame after another on more than one core: lookahead threads find the next
        # frames' flows (their own fillers, the shared caches) while this thread fills.
        ahead_flows = _FlowsAhead(lambda: new_filler(locked), frames, keys_set, fill_target=lambda f: not written(f),
            is_filled=is_filled, plan=key_plan, candidates=lambda k: source_candidates(k, plate_with_masks),
            threads=lookahead if windows is None and filler is not None else 0, depth=ahead_frames,
            limit=settings.max_sources, tries=lambda: shared.last_search[1])

        def prime(frame):
            """The setup's end, one frame after another: the run's first frame to fill made
            ready (SetupEvent): the frames before it in its window filled (their fills are
            carried to it), its flows found: its likely ones side by side on the lookahead
            threads, meeting this thread, then the rest of its search here while the
            lookahead threads go on to the frames after it. The same calls its fill would
            make (the same pixels). An error is left for the frame's own fill to raise, in
            frame order (the frames before it are written first)."""
            ahead_flows.start(frame)
            ahead_flows.submit(frame)
            try:
                fill_before(filler, loader, frame)
                pixels, mask = loader.source(frame)
                ahead_flows.help(filler, pixels, mask, frame)
                filler.find_flows(pixels, mask, key_plan(frame), source_candidates(frame, plate_with_masks), frame,
                                  carried=ahead_flows.carried(frame))
            except Exception:  # noqa: BLE001 - the fill of ``frame`` meets it again and reports it
                log.debug("setup of frame %d failed", frame, exc_info=True)

        total, done = len(frames), 0
        first_fill = next((f for f in frames if f not in keys_set and not written(f) and is_filled(f)), None) \
            if filler is not None else None
        if windows is None and first_fill is not None and not (cancel is not None and cancel.is_set()):
            prime(first_fill)
        clock = [time.perf_counter()]   # when the setup, then the last reported frame, was complete
        if progress is not None:
            progress(SetupEvent(total, clock[0] - started, first_fill))
        try:
            for frame in frames:
                if windows is None:
                    # Decode the next frames (next targets, and the next source beyond them)
                    # while this one is filled: codecs release the GIL.
                    loader.prefetch(frame)
                if cancel is not None and cancel.is_set():
                    result.cancelled = True
                    log.info("cancelled after %d of %d frames", done, total)
                    break
                if windows is not None:
                    windows.submit_ahead()
                out_path = expand(shot.out, frame)
                skip = plan_frames[frame] == "skip" if windows is not None else written(frame)
                if skip:
                    status, job = "skipped", None
                    ahead.pop(("plate", frame), None)   # the first frame, decoded ahead: not needed
                elif frame in keys_set:
                    plate, _ = loader.load(frame)
                    status = "keyframe"
                    pixels = _match_channels(io.read_image(expand(shot.keys, frame)).pixels, plate.region())
                    job = (io.write_image, out_path, pixels, plate.format)
                else:
                    # Sequentially here, or taken (in frame order) from the worker filling its window.
                    if windows is None:
                        ahead_flows.submit(frame)
                    status, plate, filled = (fill_frame(filler, loader, frame, ahead_flows) if windows is None
                                             else windows.result(frame))
                    job = ((io.write_frame, out_path, plate) if filled is None
                           else (io.write_frame, out_path, plate, filled, (box[0], box[2])))
                store.release(frame)
                if frame % TRIM_EVERY == 0:
                    trim_heap()
                # The write overlaps the next frame's fill; a frame counts as done once written.
                for event in frame_io.submit(job, (frame, status, out_path)):
                    done = _report(result, progress, event, done, total, clock)
            for event in frame_io.drain():
                done = _report(result, progress, event, done, total, clock)
        finally:
            ahead_flows.close()
            if windows is not None:
                windows.close()   # after a cancel or an error: the workers' current frames end first
            cv2.setNumThreads(cv2_threads)
        return result
    finally:
        frame_io.close()


# Frames between two hand-backs of the C heap's free memory (trim_heap): about 10 ms each at
# 1080p, against 0.3-0.5 s a frame (at 4K the wire benchmark's seconds per frame did not move).
TRIM_EVERY = 4
_MALLOC_TRIM: list = []   # [glibc's malloc_trim, or None where there is none], looked up once


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``; False and
    nothing done elsewhere: macOS, Windows, musl).

    Every thread that allocates (the filling thread, lookahead threads, readers, writers)
    gets its own glibc arena, and an arena keeps the pages of the frame-sized buffers freed
    in it while a live block sits above them: a run's peak memory then grew with the shot's
    length. ``bench/pipeline_speed.py --only memory`` (peak RSS, 20 and 200 frames of 1080p):
    untrimmed 770-800 and 885-970 MiB (1.15-1.24x); trimmed every 4 frames 625-632 and
    712-721 MiB (1.13-1.15x: what is left is the caches filling up to their bounds)."""
    if not _MALLOC_TRIM:
        try:
            import ctypes

            _MALLOC_TRIM.append(getattr(ctypes.CDLL(None), "malloc_trim", None))
        except Exception:  # noqa: BLE001 - no C library to load (Windows): nothing to trim
            _MALLOC_TRIM.append(None)
    trim = _MALLOC_TRIM[0]
    if trim is None:
        return False
    trim(0)
    return True


def _report(result: Result, progress, event, done: int, total: int, clock: list) -> int:
    """Count one finished frame; its seconds run from the previous frame's completion
    (``clock[0]``) to its own (the end of its write, or its submit when nothing was written)."""
    frame, status, path, finished = event
    done += 1
    result.frames.append(frame)
    result.statuses[frame] = status
    seconds, clock[0] = max(finished - clock[0], 0.0), max(finished, clock[0])
    if progress is not None:
        progress(FrameEvent(frame, status, done, total, seconds, path))
    return done


def _timed(fn, *args) -> float:
    """Run ``fn(*args)``; the time it ended (on the writer thread, not when it is collected)."""
    fn(*args)
    return time.perf_counter()


class _FrameIO:
    """Background threads for frame files: ``writers`` encode and write frames behind the
    fill (reported in frame order); ``readers`` (``reader``, one per filling thread) decode
    frames ahead.

    Encoding a 4K frame costs as much as filling a small region of it; on its own thread
    (codecs release the GIL) it overlaps the next frame's work, and with two writers two
    frames encode side by side (one 4K PNG encode alone outlasts a wire's fill: one writer
    was the slowest stage). A failed write raises in the caller at the next submit or drain;
    close() always waits, so no write is left running (each is atomic: a temporary file
    renamed).
    """

    def __init__(self, readers: int = 1, writers: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        self._writers = max(1, int(writers))
        self._pool = ThreadPoolExecutor(max_workers=self._writers, thread_name_prefix="keyprop-write")
        self._pending: Deque[tuple] = deque()   # (Future or None, event, time), in frame order
        self.reader = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="keyprop-read")

    def submit(self, job, event):
        """Queue ``job`` (fn, *args) or None; returns the events of writes now finished, in
        frame order, each with the time its frame was complete appended (the write's end; for
        no job, now). Waits while ``writers`` writes are queued already."""
        finished = []
        while self._pending and (len(self._pending) >= self._writers or self._done(self._pending[0])):
            finished.append(self._take())
        if job is None:
            self._pending.append((None, event, time.perf_counter()))
        else:
            self._pending.append((self._pool.submit(_timed, *job), event, None))
        while self._pending and self._done(self._pending[0]):
            finished.append(self._take())
        return finished

    @staticmethod
    def _done(pending) -> bool:
        return pending[0] is None or pending[0].done()

    def _take(self):
        future, event, at = self._pending.popleft()
        if future is not None:
            at = future.result()
        return event + (at,)

    def drain(self):
        return [self._take() for _ in range(len(self._pending))]

    def close(self):
        pending, self._pending = list(self._pending), deque()
        for future, _, _ in pending:
            if future is not None:
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - the error that stopped the loop is the one to report
                    log.debug("pending write failed while stopping", exc_info=True)
        self._pool.shutdown(wait=True)
        self.reader.shutdown(wait=True, cancel_futures=True)


class _FrameStore:
    """Plate frames (file samples) and their masks' ROI crops, decoded once for every filling
    thread: frame -> Future of ``read(frame)``, the most recent kept (at most ``count``;
    beyond ``floor`` only within ``budget`` bytes of decoded frames; memory stays flat in shot
    length). Windows filled side by side share their ends (one window's first frames are the
    previous window's last sources and targets): with a store per thread each decoded them
    again."""

    def __init__(self, read, reader, count: int, budget: int, floor: int = 1):
        self._read, self._reader, self._count, self._budget = read, reader, count, budget
        self._floor = floor     # frames kept whatever their size (each thread's working set)
        self._items: "OrderedDict[int, Future]" = OrderedDict()
        self._released: "OrderedDict[int, None]" = OrderedDict()   # frames filled and kept, in release order
        self._lock = threading.Lock()

    def __contains__(self, k) -> bool:
        with self._lock:
            return k in self._items

    def prefetch(self, k) -> Optional[Future]:
        """Start decoding ``k`` on the reader thread (unless it is kept or under way: then it
        is marked as wanted soon, the last to let go)."""
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                return None
            future = self._items[k] = self._reader.submit(self._read, k)
            self._trim()
            return future

    def load(self, k, recent: bool = True):
        """``read(k)``: kept, under way (waited for), or decoded now on this thread.

        ``recent=False``: a frame wanted once for now (a source prepared once for every
        thread), not soon again. Decoded here, it is kept as the first to let go, and a kept
        one is not marked used: the frames the threads will fill next (read ahead) stay."""
        with self._lock:
            future = self._items.get(k)
            mine = future is None or future.cancelled()
            if mine:
                future = self._items[k] = Future()
                future.set_running_or_notify_cancel()
            self._items.move_to_end(k, last=recent or not mine)
            self._trim()
        if mine:
            try:
                future.set_result(self._read(k))
            except BaseException as exc:
                future.set_exception(exc)
                with self._lock:
                    if self._items.get(k) is future:
                        del self._items[k]
                raise
        return future.result()

    def release(self, k) -> None:
        """Frame ``k`` is filled: let go before any frame not filled yet (a later target wants
        it as a source only, and its prepared source is kept, core.filler.ShotCaches), the
        frames filled first going first. Without this, a source read for a lookahead thread
        (the first to let go, :meth:`load`) went before the frames already filled, and was
        read again as a target (4K wire, 24 frames: plate reads keyed 33, now 26; keyless 43,
        now 34)."""
        with self._lock:
            if k in self._items:
                self._released[k] = None

    def cancel(self, futures) -> None:
        """Drop reads ahead not begun (``futures`` from :meth:`prefetch`)."""
        with self._lock:
            for k, future in list(self._items.items()):
                if future in futures and future.cancel():
                    del self._items[k]

    def _trim(self) -> None:
        def size(future):
            if not future.done() or future.cancelled() or future.exception() is not None:
                return 0
            plate, mask = future.result()
            return plate.raw.nbytes + (0 if mask is None else mask.nbytes)

        while len(self._items) > self._count or \
                (len(self._items) > self._floor and sum(size(f) for f in self._items.values()) > self._budget):
            if self._released:   # a released frame deleted since (a failed read) is skipped
                self._items.pop(self._released.popitem(last=False)[0], None)
            else:
                self._items.popitem(last=False)


class _Loader:
    """One filling thread's view of the shared :class:`_FrameStore`: the next frames decoded
    ahead on the reader thread (codecs release the GIL)."""

    def __init__(self, store: _FrameStore, plate_with_masks, box):
        self._store, self._with_masks, self._box = store, plate_with_masks, box
        self._ahead: List[Future] = []   # this thread's reads ahead not taken yet

    def prefetch(self, frame: int) -> None:
        """Decode the frames after ``frame`` (next targets, and the next source beyond them)
        while it is filled, unless the store holds them already."""
        self._ahead = [f for f in self._ahead if not f.done()]
        for upcoming in (frame + 1, frame + 2):
            if upcoming in self._with_masks:
                future = self._store.prefetch(upcoming)
                if future is not None:
                    self._ahead.append(future)

    def forget_ahead(self) -> None:
        """Drop reads ahead not begun (a worker's next window is not the next frames)."""
        self._store.cancel(self._ahead)
        self._ahead = []

    def load(self, k):
        """(plate Frame, mask ROI crop) of frame ``k``."""
        return self._store.load(k)

    def source(self, k, recent: bool = True):
        """Frame ``k``'s ROI crop (float pixels) and mask crop (``recent``: see _FrameStore.load)."""
        plate, mask = self._store.load(k, recent)
        return plate.region(*self._box), mask

    def candidate(self, k):
        """:meth:`source` for a frame prepared as a source of another (once for every thread,
        core.filler.ShotCaches): a frame decoded for that alone does not push out the frames
        the threads fill next (far candidates, +-4 to +-32 frames away, did: a keyless wire
        across 4K, 24 frames, took 64 plate decodes, now 42)."""
        return self.source(k, recent=False)


class _LockedEngine:
    """An engine shared by the window workers, one call at a time: engines are not required
    to be thread-safe (lazy state: ONNX sessions made on first use, the last prefilled frame
    remembered, position encodings cached), and one network pass already uses every core
    the engine was given. Everything else is the engine's own."""

    def __init__(self, engine):
        self._engine = engine
        self._lock = threading.Lock()

    def encode_keyframe(self, *args, **kwargs):
        with self._lock:
            return self._engine.encode_keyframe(*args, **kwargs)

    def fill(self, *args, **kwargs):
        with self._lock:
            return self._engine.fill(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


class _Fillers:
    """(ShotFiller, loader) pairs handed between threads: one that a thread gave back, else a
    new one (``new_filler()``); at most one per thread at a time."""

    def __init__(self, new_filler):
        self._new_filler = new_filler
        self._idle: List[tuple] = []
        self._lock = threading.Lock()

    def take(self) -> tuple:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_filler()

    def give(self, taken: tuple) -> None:
        with self._lock:
            self._idle.append(taken)


class _WindowFills:
    """Temporal windows (core.temporal) filled ``workers`` at a time, each by its own
    ShotFiller on a worker thread; results taken in frame order.

    A frame's fill depends on the frames before it in its window only (a window's worker
    fills them in order, first the chain before a run's first frame, as the sequential path
    does), and on nothing another window's filling left in a filler (its caches give the
    same values however they were filled: a farm chunk starts with none), so the pixels are
    those of one thread filling every frame in turn. Windows are handed out in order, at
    most ``workers`` of them not yet taken, so memory stays bounded whatever the shot's
    length: a window ahead holds at most its frames' fills until they are written. The
    caller takes each frame's result in frame order (:meth:`result`) and writes and reports
    it as the sequential path does. A failed frame stops its own window only (the frames
    before it, in earlier windows, are still written); :meth:`close` stops the workers
    between frames and waits for them.
    """

    def __init__(self, workers: int, new_filler, fill_frame):
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self._fill_frame = fill_frame
        self._fillers = _Fillers(new_filler)   # (filler, loader) of a finished window, for the next
        # The workers compute a flow's two directions in turn (core.flow.directions_in_turn)
        # instead of handing one to flow's single helper thread (the windows already keep the
        # cores busy; the two workers queueing on the helper cost 10-20 % per frame, measured on
        # 2 cores with bench/pipeline_speed.py --only real). The results are the same.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyprop-window",
                                        initializer=flowlib.directions_in_turn)
        self._stop = threading.Event()
        self._tasks: List[List[int]] = []      # each window's frames to fill, in order
        self._task_of: Dict[int, int] = {}     # frame -> its window's index in _tasks
        self._futures: Dict[int, object] = {}  # frame -> Future of fill_frame's (status, plate, filled), until taken
        self._submitted = 0
        self._taken = 0                        # windows whose last frame the caller has taken

    def plan(self, frames: Sequence[int], skipped: Callable[[int], bool], keys) -> Dict[int, str]:
        """frame -> 'skip' (resume: written already), 'key', or 'fill' (a worker's: filled or
        passed through); the 'fill' frames grouped by window."""
        from concurrent.futures import Future

        from .temporal import window_start

        plan, current = {}, None
        for frame in frames:
            plan[frame] = "skip" if skipped(frame) else "key" if frame in keys else "fill"
            if plan[frame] != "fill":
                continue
            if current != window_start(frame):
                current = window_start(frame)
                self._tasks.append([])
            self._tasks[-1].append(frame)
            self._task_of[frame] = len(self._tasks) - 1
            self._futures[frame] = Future()
        return plan

    def submit_ahead(self) -> None:
        """Hand out windows up to ``workers`` beyond those the caller has finished taking."""
        while self._submitted < min(len(self._tasks), self._taken + self.workers):
            # The worker holds its window's futures (this object drops each one once taken).
            self._pool.submit(self._run, [(f, self._futures[f]) for f in self._tasks[self._submitted]])
            self._submitted += 1

    def result(self, frame: int):
        """``frame``'s (status, plate, filled), waiting for its worker; raises its error."""
        task = self._task_of.pop(frame)
        self.submit_ahead()
        try:
            return self._futures.pop(frame).result()
        finally:
            if frame == self._tasks[task][-1]:
                self._taken = task + 1
                self.submit_ahead()   # the next window starts while this one's frames are written

    def _run(self, window: List[tuple]) -> None:
        """A worker: fill one window's frames in order (the chain first, where needed)."""
        try:
            filler, loader = self._fillers.take()
        except BaseException as exc:  # noqa: BLE001 - raised where the caller takes the window's first frame
            for _, future in window:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            return
        failed = False
        try:
            for frame, future in window:
                if failed or self._stop.is_set():
                    future.cancel()
                    continue
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    loader.prefetch(frame)
                    future.set_result(self._fill_frame(filler, loader, frame))
                except BaseException as exc:  # noqa: BLE001 - raised where the caller takes this frame
                    future.set_exception(exc)
                    failed = True
        finally:
            loader.forget_ahead()
            self._fillers.give((filler, loader))

    def close(self) -> None:
        self._stop.set()
        for future in self._futures.values():
            future.cancel()   # frames not begun; a running one ends (whole) and is discarded
        self._pool.shutdown(wait=True, cancel_futures=True)


# Lookahead threads, and the frames after the one being filled whose flows they find. Four
# frames ahead instead of two, keyless bikes_walker (whose 8th frame needs sources two frames
# away) came to 1.4-1.8x the median frame in 11 runs of one harness against 1.6-2.7x, but in
# side-by-side runs of bench/pipeline_speed.py --only real the 16 rows' max/median averaged
# 1.67 against 1.55 (the last frames, with no lookahead beside them, come quicker, and the
# first share the cores with it) with as many rows over 2 (4 of 32 against 4), for about
# 50 MB more at 1080p (--only memory): two. Tried and dropped: the lookahead threads 5 nicer
# than the filling thread (Linux, per thread), three frames ahead. In interleaved runs of one
# harness, 16-frame real shots on an idle machine, 22 of 150 runs over 2x the median frame
# against 39 (keyless bikes_walker 0 of 20 against 13; keyed carphone_walker 14 of 18 against
# 6); in bench/pipeline_speed.py --only real --repeat 3 --against, 7 of 48 against 8. But
# beside two busy processes its wall time was 1.5-1.6x (bikes_walker keyless 12.5 s against
# 7.7, bikes_wire keyed 17.0 against 11.5): nice is against every process on the machine,
# and on a shared one the lookahead lost its cores to the others' jobs. At most one fewer than
# the cores (--threads), though: a compute thread a core with the filling thread, so one on
# two cores. Two there kept both cores busiest, but the filling thread's fill took 0.11 s
# beside no lookahead work and 0.2 s beside two threads of it (keyless bikes_walker), and its
# frames' seconds swung with that. Interleaved runs of one harness (16-frame real shots, 5
# rows, then 8, 5 runs a row): 1 and 1 run over 2x the median frame against 6 and 5 (keyed
# carphone_walker 0 of 10 against 6), wall time 9 % and 6 % longer; computing a flow's two
# directions in turn, as two threads do, 3 and 2 runs over, 5 % and 1 % longer.
# bench/pipeline_speed.py --only real --repeat 3 --against d83be26: 2 of 48 runs over 2x
# against 3 (the 16 rows' mean max/median 1.52 against 1.56), s/frame -9 to +13 %.
LOOKAHEAD = 2
AHEAD_FRAMES = 2
# A keyless window's first frame searches farther (ShotFiller.choose_sources): 3-7 flows, the
# far ones dearer, against 2-3. Queued at its own turn, the lookahead threads made them all
# between the frame before's fill and its own: keyless carphone_walker's 1008 took 2.4-2.7x
# the median frame in three runs of one harness. Then its likely flows beyond the two
# nearest, guessed from the latest such search's tries, were queued two frames sooner
# (1.3-1.8x there); but that guess came from the run's first frame, whose search has frames
# on one side only: carphone_walker's 1008 made a far flow to 1016 in vain and missed 1006,
# and in bench/pipeline_speed.py --only real --repeat 3 it took 1.98-2.18x the median frame.
# Now its search itself runs in parts (no guess): one on each of the SEARCH_TURNS frames'
# turns before its own, each making PART_PAIRS of its candidates' DIS pairs in the search's
# order, and the rest at its own turn. Interleaved harness runs of the keyless 16-frame real
# shots (6 rounds): mean max/median carphone_walker 1.29 against 1.72, bbb_walker 1.41
# against 1.65 (their 1008 no longer the slowest frame), bikes_wire 1.60 against 1.61,
# carphone_wire 1.47 against 1.40, bikes_walker 1.86 against 1.59 and bbb_wire 1.73 against
# 1.59 (whose slowest frames are 1003-1011 and 1004-1005 either way; 8 more rounds of those
# two: 1.71 against 1.64, 1.66 against 1.56); the same bytes.
SEARCH_TURNS = 2
PART_PAIRS = 1


class _Tasks:
    """Worker threads that take, of the tasks submitted and not cancelled, the first by
    priority whose prerequisites (``after``: futures) are done; idle while none is. A
    frame's search waits for its likely flows this way instead of holding a thread that
    would sit waiting on another's flow while work for the next frame is there to do."""

    def __init__(self, workers: int, name: str, initializer: Callable[[], None]):
        self._tasks: list = []   # [priority, seq, future, fn, args, after]
        self._seq = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._work, args=(initializer,), name=f"{name}_{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, priority, fn, *args, after: Sequence[Future] = ()) -> Future:
        future: Future = Future()
        with self._cond:
            self._tasks.append((priority, self._seq, future, fn, args, tuple(after)))
            self._seq += 1
            self._cond.notify()
        for f in after:
            f.add_done_callback(self._wake)
        return future

    def _wake(self, _future=None) -> None:
        with self._cond:
            self._cond.notify_all()

    def _take(self):
        """The first ready task by priority (under the lock), or None; drops cancelled ones."""
        self._tasks = [t for t in self._tasks if not t[2].cancelled()]
        ready = [t for t in self._tasks if all(f.done() for f in t[5])]
        if not ready:
            return None
        task = min(ready, key=lambda t: t[:2])
        self._tasks.remove(task)
        return task

    def _work(self, initializer) -> None:
        initializer()
        while True:
            with self._cond:
                task = self._take()
                while task is None:
                    if self._closed:
                        return
                    self._cond.wait()
                    task = self._take()
            _, _, future, fn, args, _ = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits on it
                    future.set_exception(e)
            self._wake()

    def shutdown(self) -> None:
        """Cancel what has not begun; wait for what has."""
        with self._cond:
            self._closed = True
            for task in self._tasks:
                task[2].cancel()
            self._tasks = []
            self._cond.notify_all()
        for t in self._threads:
            t.join()


class _FlowsAhead:
    """Lookahead for the sequential path (one frame after another, on more than one core).

    ``threads`` lookahead threads, each with its own ShotFiller over the shot's shared caches,
    find the flows of the next ``depth`` frames to fill while the filling thread composes the
    current frame, whose fill then finds its flows made. Per frame, nearest frame first
    (:class:`_Tasks`): its likely flows one task each (ShotFiller.find_pair: to its
    keyframes, and to the plate frames the latest usual search tried, ShotCaches.last_search; the
    two nearest before any search), so the threads share the nearest frame and it is ready
    before the next; then, once those are made, the rest of its search (find_flows). Handed
    out a frame a thread, two frames were made ready together and were filled and written
    in pairs (keyed bikes_wire, frames 0.2 and 0.5 s in turn); queued behind its first
    flows, a search held its thread waiting on another's flow while the next frame's work
    waited. Frames are filled and written in order, and a window's first frame finds its
    flows to the frames before it made by their fills (with windows side by side it made
    them all itself). The filling thread takes a frame's flows no thread has begun itself
    (:meth:`help`). A guessed flow its search then does not try is the only work done in
    vain. A window's first frame, whose fill carries nothing from the frame before, gets its
    network fill made after its search should its fill want one (ShotFiller.network_ahead);
    a keyless one, which searches farther, has its search run in parts on the turns of the
    frames before it (:meth:`_search_in_parts`), guessing nothing.
    The values are those the fill would make itself: the same pixels. An error here is left
    for the frame's own fill to raise, in frame order."""

    def __init__(self, new_filler, frames, keys, fill_target, is_filled, plan, candidates, threads: int,
                 depth: int, limit: int, tries=lambda: ()):
        self._frames = [f for f in frames if f not in keys]
        self._index = {f: i for i, f in enumerate(self._frames)}
        self._fill_target, self._is_filled, self._plan, self._candidates = fill_target, is_filled, plan, candidates
        self.depth = depth if threads else 0   # frames ahead
        self._limit = limit                     # sources a frame takes
        self._tries = tries   # the offsets the latest usual search tried (ShotCaches.last_search)
        # frame (its search), ("part", frame, source), ("search", frame, turn) (a part of its
        # search: _search_in_parts) or ("network", frame) -> Future
        self._futures: Dict[object, object] = {}
        self._fillers = _Fillers(new_filler)        # (filler, loader) of each lookahead thread
        self._submitted = 0
        self._carried: Dict[int, bool] = {}   # frame -> carried(frame)
        self._looked = 0   # frames (by index) before this one were looked at for the early queue (submit)
        # Two or more threads keep the cores busy side by side: each computes a flow's two
        # directions in turn, offering the second to the filling thread should it wait
        # (flowlib.directions_in_turn). One (on two cores) hands the second to core.flow's
        # helper thread, as the filling thread does.
        self._pool = _Tasks(threads, "keyprop-ahead", flowlib.directions_in_turn if threads > 1 else lambda: None) \
            if self.depth else None

    def carried(self, k: int) -> bool:
        """Whether frame ``k``'s fill carries the frame before's (filled in the same window).
        Kept once asked: a frame's likely flows, its network task and its search each ask, and
        is_filled reads the frame before's mask."""
        if k not in self._carried:
            self._carried[k] = same_window(k - 1, k) and self._is_filled(k - 1)
        return self._carried[k]

    def _parts(self, k: int) -> list:
        """Frame ``k``'s flows most likely wanted: to its keyframes, and to the plate frames at
        the offsets the latest usual search tried (or, before any, its two nearest candidates)."""
        plan, candidates = self._plan(k), self._candidates(k)
        tried = [k + o for o in self._tries() if k + o in candidates]
        return [("key", j) for j in plan] + (tried or list(candidates[:max(0, min(2, self._limit - len(plan)))]))

    def start(self, k: int) -> None:
        """Frame ``k``'s likely flows, side by side on the lookahead threads (the run's first
        frame's: :func:`propagate`'s prime)."""
        if self._pool is None:
            return
        for part in self._parts(k):
            if ("part", k, part) in self._futures:
                continue
            self._futures[("part", k, part)] = self._pool.submit((self._index.get(k, -1), 0), self._find, k, part)

    def submit(self, frame: int) -> None:
        """Queue the ``depth`` frames to fill after ``frame`` for the lookahead threads: each
        frame's likely flows, then the rest of its search once they are made; and, of the
        SEARCH_TURNS frames after those, a keyless window's first frame's search in parts."""
        if self._pool is None or frame not in self._index:
            return
        upto = min(len(self._frames), self._index[frame] + 1 + self.depth)
        self._submitted = max(self._submitted, self._index[frame] + 1)
        for k in self._frames[max(upto, self._looked):upto + SEARCH_TURNS]:
            if self._fill_target(k) and ShotFiller.looks_farther(self._plan(k), self.carried(k)):
                self._search_in_parts(k)
        self._looked = max(self._looked, upto + SEARCH_TURNS)
        while self._submitted < upto:
            k = self._frames[self._submitted]
            self._submitted += 1
            if self._fill_target(k):
                if k not in self._futures:   # else its search is queued in parts
                    self.start(k)
                    parts = [self._futures[key] for key in self._keys("part", k)]
                    self._futures[k] = self._pool.submit((self._index[k], 1), self._find, k, after=parts)
                if not self.carried(k):
                    # A window's first frame: its network fill, should its fill want one, once
                    # its search is done (ShotFiller.network_ahead).
                    self._futures[("network", k)] = self._pool.submit((self._index[k], 2), self._find, k, "network",
                                                                      after=[self._futures[k]])

    def _keys(self, kind: str, k: int) -> list:
        """The keys of ``self._futures`` of one ``kind`` ("part", "search") for frame ``k``, in
        the order queued."""
        return [key for key in self._futures if isinstance(key, tuple) and key[:2] == (kind, k)]

    def _search_in_parts(self, k: int) -> None:
        """Queue the search of frame ``k``, a keyless window's first frame (it searches farther,
        from frames on both sides, where the latest search of its kind, the run's first frame's,
        may have had frames on one side only: no guess), in parts: one on each of the
        SEARCH_TURNS frames' turns before its own (each making PART_PAIRS of its candidates' DIS
        pairs, in the search's order: ShotFiller.choose_sources' ``pairs``), one after another,
        and the rest at its own turn. A frame's turn takes its likely flows first, then the part,
        then its own search."""
        at, after = self._index[k], []
        for turn in range(SEARCH_TURNS, 0, -1):
            after = [self._pool.submit((at - turn, 0.5), self._find, k, ("pairs", PART_PAIRS), after=after)]
            self._futures[("search", k, turn)] = after[0]
        self._futures[k] = self._pool.submit((at, 1), self._find, k, after=after)

    def help(self, filler, pixels, mask, frame: int) -> None:
        """On the filling thread, before ``frame``'s fill: its likely flows no lookahead
        thread has begun (last first, meeting the lookahead threads), then wait for those
        under way. Its search's remainder, or parts of it, not begun, are left to its fill."""
        if self._pool is None:
            return
        parts, searches = self._keys("part", frame), self._keys("search", frame)
        # The network first (it waits on the search), the search before its parts (it waits on them).
        for key in [("network", frame), frame] + searches:
            if key in self._futures and self._futures[key].cancel():
                del self._futures[key]
        if parts and mask is not None and (mask > 0).any():
            for key in reversed(parts):
                if not self._futures[key].cancel():
                    continue
                try:
                    filler.find_pair(frame, pixels, mask, key[2])
                except Exception:  # noqa: BLE001 - a source the search does not try must not fail the frame
                    log.debug("lookahead of frame %d (%s) failed", frame, key[2], exc_info=True)
        for key in parts + searches + [frame, ("network", frame)]:
            future = self._futures.pop(key, None)
            if future is not None and not future.cancelled():
                # Under way on a lookahead thread: this thread takes the other direction of
                # its flows meanwhile (flowlib.help_until; two or more threads offer it, one
                # hands it to core.flow's helper thread).
                future.add_done_callback(flowlib.wake_helpers)
                flowlib.help_until(future.done, frame)
                future.exception()   # the frame's own fill raises the error, in frame order

    def _find(self, k: int, part=None) -> None:
        """A lookahead thread: frame ``k``'s flows (find_flows), one of them (``part``), a part
        of its search (``part`` ("pairs", n): find_flows making n DIS pairs), or (``part``
        "network") its network fill."""
        taken = self._fillers.take()
        filler, loader = taken
        try:
            pixels, mask = loader.source(k)
            if mask is None or not (mask > 0).any():
                return
            # The other direction of its flows offered to the filling thread should it wait
            # for this frame (help).
            with flowlib.offering(k):
                if part == "network":
                    filler.network_ahead(pixels, mask, self._plan(k), self._candidates(k), k)
                elif isinstance(part, tuple) and part[0] == "pairs":
                    filler.find_flows(pixels, mask, self._plan(k), self._candidates(k), k, carried=self.carried(k),
                                      pairs=part[1])
                elif part is not None:
                    filler.find_pair(k, pixels, mask, part)
                else:
                    filler.find_flows(pixels, mask, self._plan(k), self._candidates(k), k, carried=self.carried(k))
        except Exception:  # noqa: BLE001 - the fill of ``k`` meets it again and reports it
            log.debug("lookahead of frame %d failed", k, exc_info=True)
        finally:
            self._fillers.give(taken)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# --- in memory ------------------------------------------------------------------------------

def fill_frames(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], key_indices: Iterable[int], engine,
                settings: Optional[Settings] = None, linear: bool = False,
                debug: Optional[dict] = None, first: int = 0) -> List[np.ndarray]:
    """Fill a shot held in memory: the same pixels :func:`propagate` writes for it.

    Args:
        frames: (H, W, C) float32 frames (display-referred [0, 1] unless ``linear``).
        masks: (H, W) float32, 1 = fill.
        key_indices: indices of ``frames`` that are clean keyframes (returned unchanged);
            empty: the shot is filled from its own frames.
        engine: from ``core.runtime.create_engine``.
        first: the frame number of ``frames[0]`` (temporal windows are on frame numbers:
            the same pixels as a file run needs the same numbers).
        debug: a dict that, when given, receives ``labels``: {index: (H, W) int16} for each
            filled frame, the source that filled each pixel (-1: the network, -2: outside
            the ROI; indices in the order the fill took its sources: keyframes, then plate frames).
    """
    settings = settings or Settings()
    keys = sorted(set(int(k) for k in key_indices))
    size = frames[0].shape[:2]
    bbox = union_bbox(mask_bbox(m) for m in masks)
    if bbox is None:
        return [f.copy() for f in frames]
    roi = shot_roi(bbox, size, settings, engine.stride)
    # Frame numbers (``first`` + index) for everything the pipeline decides by frame.
    everything = set(range(first, first + len(frames)))
    filler = ShotFiller(engine, roi, settings, linear, key_loader=lambda k: frames[k - first],
                        source_loader=lambda k: (frames[k - first], masks[k - first]), source_frames=everything)
    keys = [first + k for k in keys]
    out = []
    for i, (pixels, mask) in enumerate(zip(frames, masks)):
        frame = first + i
        if frame in keys or not (mask > 0).any():
            out.append(pixels.copy())
        else:
            plan = plan_keyframes(frame, keys, settings.max_keys) if keys else []
            out.append(filler.fill(pixels, mask, plan, source_candidates(frame, everything), frame))
            if debug is not None:
                debug.setdefault("labels", {})[i] = filler.labels_at_plate(mask.shape[:2])
    return out
