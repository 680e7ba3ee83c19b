"""The per-shot filler: one target frame in, its filled ROI out.

:class:`ShotFiller` holds what a shot's frames share (the ROI, the engine, prepared
keyframes and plate frames, flows) and, per target, orchestrates the pixel decisions that
live in their own modules::

    plate, mask --crop to ROI--> display-referred [0, 1] --resize--> working size
    sources: keyframes (nearest before/after, at most max_keys), plate frames that show the
        hole (choose_sources), the previous frame's fill (core.temporal)
    --> DIS flow target->source (core.flow: completed in the hole) + consistency error
    --> warped, exposure-matched sources, weighed per pixel (core.fusion); the network
        (engine.fill) only where no source shows a hole pixel
    --> composed in the gradient domain (core.composite.poisson_fill)
    --> with a fused_base model, corrected by the network (engine.fill with the fused fill as base)
    -> plate size (+ keyframe detail where the keyframe fills and its warp is reliable)
    -> scene-linear if the plate is -> composited inside the mask only (core.composite)
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Container, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from . import color
from . import flow as flowlib
from .composite import composite, composite_alpha, guidance, network_hole, poisson_fill
from .fusion import Warped, context_fill, fuse, match_colour
from .roi import ROI, mask_bbox
from .settings import Settings
from .temporal import same_window

__all__ = ["ShotFiller", "ShotCaches", "SharedLRU", "source_candidates", "SOURCE_OFFSETS", "LRU", "rgb3"]

log = logging.getLogger(__name__)


def rgb3(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) plate pixels -> (H, W, 3) colour (grey replicated, alpha dropped)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]


# Offsets (in frames) at which plate frames are tried as sources: near first, then spread
# out, so a hole that a moving occluder uncovers slowly still finds its background.
SOURCE_OFFSETS = (1, -1, 2, -2, 4, -4, 8, -8, 16, -16, 32, -32)
# A plate source must show at least this share of the target's hole (once aligned).
MIN_SOURCE_GAIN = 0.02
# Share of the hole below which what no source shows is filled from its surroundings instead
# of by the network (whose pass costs its sources' encodings and a pass over the fusion box, or
# the whole working area: network_box, however few pixels it is for).
SMALL_UNSHOWN = 0.05
# The network's pass covers the fusion box (network_box) unless that would be more than this
# share of the working area: then all of it, as before.
NETWORK_BOX_SHARE = 0.75
# Or when it is thin: nowhere farther than this many working pixels from a pixel that is known
# or shown (a wire's end, a stripe along a matte's edge), where Telea continues the
# surroundings across as well as the network does.
THIN_UNSHOWN = 12.0
# Working pixels around a frame's hole and composite region that its fusion covers
# (fusion_box): the colour match's ring (fusion.RING_PX) and the blurs of the sources' scores
# and costs (a few pixels) lie well inside; what is farther away speaks only through the
# push-pull completions (the sources' scores inside the hole, the solve's start), whose
# coarse levels reach about a hole's width. bench/real_quality.py, keyless bbb_walker (a
# walker about 150 working pixels wide): 26.29 dB with 32, 26.59 with 64, 26.61 with 128 and
# with the whole working area.
FUSION_MARGIN = 64
# What a plate source cannot show: its own hole and a rim of this many working pixels.
SOURCE_HOLE_RIM = np.ones((5, 5), np.uint8)
# Two plate frames are pre-aligned to each other (Settings prealign) only where the feature
# matches that agree with the homography between them move by this share of the working frame's
# long side or more (keyframes whatever they move): nearer, their motion is within DIS's reach,
# and on real footage one homography rarely describes it better (moving people, parallax, a
# face). Pre-aligning them all cost keyless fills up to a third of their time where the camera
# moves: keyless bikes_walker (16 frames) 4.5 s against 3.4, bikes_wire 8.2 against 6.9; its
# late frames' flows were pre-aligned and its early ones' not, so a late frame took 2-3x an
# early one. bench/real_quality.py: keys 27.88 -> 27.87 dB, keyless 25.59 -> 25.55
# (bikes_walker's last frame, its sources all on one side, -2.5); bench/quality.py, rigid
# homographies where pre-alignment is exact: keys 37.50 -> 37.40, no keys 35.49 -> 35.32 (pan
# -0.57, zoom_rotate -0.37). By frame distance instead (plate frames 4 or more apart), the same
# figures, but the fast pan of tests/test_fusion.py (12 px a frame, 128 px wide, fine texture),
# which DIS alone loses, lost its plate sources. The motion was first measured at the frame's
# corners: on carphone (a face close-up, its matches on the face) the homography threw the
# corners 4-48 % while the matches moved 1-8 %, and 21 of the 35 plate pairs with a homography
# in its two keyless 16-frame shots were pre-aligned, each rejected (its flow 38-243 % less
# consistent); the other real shots' plate pairs moved under 8 % either way. Measured at the
# matches, none is pre-aligned: the same bytes on every real shot, and keyless carphone's window
# start (7 flows, its far ones pre-aligned: 2x the median frame's work single-threaded) cheaper;
# bench/quality.py keys the same (37.40), no keys 35.32 -> 35.30 (zoom_rotate 35.55 -> 35.44: at
# 240x320 its matches lie inside ORB's 31 px border and under-read the zoom).
PLATE_PREALIGN_MOTION = 0.08


class LRU(OrderedDict):
    """A small least-recently-used cache: memory stays bounded however long the shot (every
    insertion evicts the oldest entries beyond ``size``)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        return value


def made_once(lock, items, key, make: Callable[[], object], touch: Optional[Callable] = None):
    """``items[key]``'s value, for threads that ask at once: the first caller makes it
    (``make()``) while later callers wait for it, so nothing is made twice; a failed make is
    raised in every caller waiting for it and not kept. ``items`` (a dict-like of Futures) is
    touched under ``lock`` only; ``touch(key)``: called under it when the key was there."""
    with lock:
        future = items.get(key)
        mine = future is None
        if mine:
            future = items[key] = Future()
        elif touch is not None:
            touch(key)
    if mine:
        try:
            future.set_result(make())
        except BaseException as exc:
            with lock:
                if items.get(key) is future:
                    del items[key]
            future.set_exception(exc)
            raise
    return future.result()


class SharedLRU:
    """A least-recently-used cache that several threads use at once.

    ``get_or(key, make)``: the first caller of a key makes its value while later callers wait
    for it (nothing is made twice); ``get`` and ``[]=`` are the plain cache's, each under the
    lock (two threads may then compute one value side by side: the callers' values must not
    depend on who made them)."""

    def __init__(self, size: int):
        self._items = LRU(size)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._items.size

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self):
        with self._lock:
            return iter(list(self._items))

    def get(self, key, default=None):
        with self._lock:
            return self._items.get(key, default)

    def __setitem__(self, key, value):
        with self._lock:
            self._items[key] = value

    def get_or(self, key, make: Callable[[], object]):
        return made_once(self._lock, self._items, key, make, touch=self._items.move_to_end)


class FlowsByTarget:
    """Flows (target -> source: flow and error) of the targets being filled, each made once:
    a target's flow to the frame before it serves both the source search and the carried
    fill, and a lookahead thread (core.api) finds a target's flows before its fill (and a
    window's first frame's network fill, under the source key "network":
    ShotFiller.network_ahead). A target's flows are dropped when its fill ends (a flow is
    directional: no other target asks for them), so memory holds the frames in work only."""

    def __init__(self):
        self._targets: Dict[object, Dict[object, Future]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._targets.values())

    def get_or(self, target, source, make: Callable[[], object]):
        with self._lock:
            flows = self._targets.setdefault(target, {})
        return made_once(self._lock, flows, source, make)

    def has(self, target, source) -> bool:
        """Whether the flow is made or being made."""
        with self._lock:
            return source in self._targets.get(target, {})

    def discard(self, target) -> None:
        with self._lock:
            self._targets.pop(target, None)


class ShotCaches:
    """What the fillers of one shot's threads share, each value made once for all of them:
    keyframes prepared (crop converted and resized, FlowFrame, its ORB features once found),
    plate frames prepared as sources and targets, the raw DIS flows between two plate
    frames (both directions; where two windows meet, the pair at their border is flowed once,
    not by each), and the flows between adjacent plate frames. ``fillers``: how many fillers
    fill frames apart (windows side by side); ``ahead``: for how many frames after a
    filler's lookahead threads find flows (they work among its frames: they add their
    frames in work, not another span of sources). The sizes grow with them; they do not
    grow with the shot's length."""

    def __init__(self, settings: Settings, fillers: int = 1, ahead: int = 0):
        n, ahead = max(1, int(fillers)), max(0, int(ahead))
        self.keys = SharedLRU(2 * settings.max_keys + 2)
        # frame -> (work RGB, hole zeroed; hole; FlowFrame)
        self.plates = SharedLRU(n * (2 * len(SOURCE_OFFSETS) + 2) + ahead)
        # DIS flows both ways between two plate frames, completed in the holes: frame t's
        # pair with t+1 serves t+1's with t. Two a source for each filler and each frame its
        # lookahead works ahead, and at least three a source for each filler: its own targets
        # in turn want that many (the next target reuses the pairs of the one before, and an
        # adjacent source's flow beyond is another pair). At two, one filler with no lookahead
        # (--threads 1, or a ShotFiller on its own) made 15-21 of the 36-41 pairs
        # of keyless 16-frame real shots a second time (bikes_wire, bbb_wire, carphone_walker,
        # carphone_wire; bbb_walker 7 of 32, bikes_walker none of 26); at three, none to 2.
        self.pairs = SharedLRU(max((n + ahead) * 2, n * 3) * settings.max_sources)
        # The pre-alignments of those pairs (core.flow._aligned: a homography, or None where
        # the frames need none, and the pre-aligned flows where a target takes them), shared
        # the same way; most pairs need none, and few take the flows. Two entries a pair (its
        # homography, its pre-aligned flows): half as many, and keyless bikes_walker's late
        # frames (every pair pre-aligned) made 14 of their 94 DIS flows a second time (--threads 1).
        self.aligned = SharedLRU((n + ahead) * 4 * settings.max_sources)
        # Flows between adjacent plate frames as flow_between finds them, before
        # ShotFiller._extrapolated: t -> t+1 is also the flow beyond for t-1 -> t. At least 6
        # for each filler: at 4, one filler with no lookahead made 11 of the 30 of those shots
        # again, at 6 none.
        self.adjacent = SharedLRU(max((n + ahead) * 4, n * 6))
        self.flows = FlowsByTarget()   # target tag -> source key -> (flow, error), while in work
        # The latest usual search's tries (not one that looked farther: ShotFiller.choose_sources):
        # (target frame, offsets of the plate frames it flowed to, in order); the lookahead's
        # first guess at the next targets' (core.api).
        self.last_search = (None, ())


class ShotFiller:
    """Fills targets of one shot at one ROI against keyframes encoded once (lazily).

    ``key_loader(frame) -> (H, W, C)`` plate-valued keyframe pixels; ``source_loader(frame)
    -> (pixels, mask)`` a plate frame and its mask, for shots filled from their own frames;
    ``linear`` says whether pixel values are scene-linear (converted to display for the
    network). Loaders may return full frames or their ROI crops (an ROI-sized array is
    taken as a crop), and :meth:`fill` takes either too: a crop in, the filled crop out.
    ``source_frames``: the plate frames the source loader serves; with it, a flow to an
    adjacent plate frame takes that frame's own motion deep in the target's hole
    (:meth:`_extrapolated`).
    """

    def __init__(self, engine, roi: ROI, settings: Settings, linear: bool,
                 key_loader: Callable[[int], np.ndarray],
                 source_loader: Optional[Callable[[int], tuple]] = None,
                 shared: Optional[ShotCaches] = None, source_frames: Optional[Container[int]] = None):
        self.engine, self.roi, self.settings, self.linear = engine, roi, settings, linear
        self.key_loader, self.source_loader = key_loader, source_loader
        self.source_frames = source_frames   # plate frames the source loader serves (None: not known)
        # ``shared``: the caches of every filler of the shot (default: this one's own)
        shared = shared if shared is not None else ShotCaches(settings)
        self.shared = shared
        self._keys = shared.keys                               # keyframe -> (work RGB, ROI RGB, FlowFrame)
        self._key_handles: Dict[int, object] = {}             # keyframe -> engine handle (when the network runs)
        self._plate = shared.plates                            # frame -> (work RGB with hole zeroed, hole, FlowFrame)
        self._encoded = LRU(max(4, settings.max_sources + 2))  # frame -> engine handle
        self._dis = shared.pairs                               # (tag, tag) -> raw DIS pair, completed
        self._aligned = shared.aligned                         # (name, tag, tag) -> pre-alignment
        self._adjacent = shared.adjacent                       # (tag, tag) -> flow_between of adjacent plate frames
        self._flows = shared.flows                             # target tag -> source key -> (flow, error)
        self.last_labels: Optional[np.ndarray] = None          # the last fill's source labels (working size)
        self._previous: Optional[tuple] = None                 # (frame, its fill composed at working size)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        """The ROI of a full frame; an ROI-sized array is taken as already cropped."""
        roi = self.roi
        return image if image.shape[:2] == (roi.height, roi.width) else roi.crop(image)

    def _display(self, pixels: np.ndarray) -> np.ndarray:
        rgb = rgb3(pixels).astype(np.float32)   # a copy: clipped in place (a 4K ROI is copied once)
        rgb = color.to_display(rgb) if self.linear else rgb
        return np.clip(rgb, 0.0, 1.0, out=rgb)

    def _prepare(self, pixels: np.ndarray, mask: np.ndarray):
        """Plate pixels and mask -> working-size display RGB (hole zeroed) and binary hole."""
        roi = self.roi
        hole = (roi.resize_to_work(network_hole(self._crop(mask), self.settings.dilate)) > 0).astype(np.float32)
        rgb = roi.resize_to_work(self._display(self._crop(pixels))) * (1.0 - hole[:, :, None])
        return rgb, hole

    @staticmethod
    def _net_input(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        return np.concatenate((rgb.transpose(2, 0, 1), hole[None])).astype(np.float32)  # (4, h, w)

    def keyframe(self, frame: int):
        """(working display RGB, ROI display RGB at plate size, FlowFrame) of a keyframe, cached."""
        def make():
            crop = self._display(self._crop(self.key_loader(frame)))
            work = self.roi.resize_to_work(crop)
            # No tag: a keyframe's flows are never asked for the other way round.
            return work, crop, self._flow_frame(work, None, None)
        return self._keys.get_or(frame, make)

    def _key_handle(self, frame: int, box=None):
        """The engine's encoding of a keyframe, made the first time the network runs; of its
        part ``box`` (two slices of the working area) when given (made each time)."""
        if box is None and frame in self._key_handles:
            return self._key_handles[frame]
        work = self.keyframe(frame)[0]
        work = work if box is None else work[box]
        handle = self.engine.encode_keyframe(self._net_input(work, np.zeros(work.shape[:2], np.float32)))
        if box is None:
            self._key_handles[frame] = handle
            log.debug("encoded keyframe %d at %dx%d", frame, work.shape[1], work.shape[0])
        return handle

    def plate_frame(self, frame: int, load: Optional[Callable[[], tuple]] = None):
        """A plate frame prepared once, for its use as a source and as the target: (working RGB
        with its hole zeroed, hole, FlowFrame). ``load() -> (pixels, mask)``; default: the
        source loader (a target's own pixels and mask must be the loader's)."""
        def make():
            rgb, hole = self._prepare(*(load() if load is not None else self.source_loader(frame)))
            return rgb, hole, self._flow_frame(rgb, hole, ("plate", frame))
        return self._plate.get_or(frame, make)

    def _flow_frame(self, rgb, hole, tag):
        return flowlib.FlowFrame(rgb, hole, max(self.roi.work_h, self.roi.work_w), tag)

    def _plate_handle(self, frame: int, box=None):
        """The engine's encoding of a plate frame as a source (cached); of its part ``box``
        when given (made each time)."""
        if box is not None:
            rgb, hole = self.plate_frame(frame)[:2]
            return self.engine.encode_keyframe(self._net_input(rgb[box], hole[box]))
        return self._encoded.get_or(frame, lambda: self.engine.encode_keyframe(self._net_input(*self.plate_frame(frame)[:2])))

    def _flow(self, target: flowlib.FlowFrame, source: flowlib.FlowFrame, source_key=None):
        """flow_between target -> source, made once while the target is in work (tagged
        target; ``source_key``, default the source's tag, names the source)."""
        source_key = source.tag if source_key is None else source_key
        def compute():
            f, e = self._between(target, source)
            return self._extrapolated(target, source, f), e

        if target.tag is None or source_key is None:
            return compute()
        return self._flows.get_or(target.tag, source_key, compute)

    @staticmethod
    def _plates(target: flowlib.FlowFrame, source: flowlib.FlowFrame):
        """(t, s) when both are plate frames, else None."""
        tags = (target.tag, source.tag)
        if not all(isinstance(t, tuple) and t[0] == "plate" for t in tags):
            return None
        return target.tag[1], source.tag[1]

    @classmethod
    def _adjacent_plates(cls, target: flowlib.FlowFrame, source: flowlib.FlowFrame):
        """(t, s) when both are plate frames one apart, else None."""
        pair = cls._plates(target, source)
        return pair if pair is not None and abs(pair[1] - pair[0]) == 1 else None

    def _between(self, target: flowlib.FlowFrame, source: flowlib.FlowFrame):
        """flow_between target -> source, pre-aligned (Settings prealign; between two plate
        frames only where they move apart by PLATE_PREALIGN_MOTION); between adjacent plate
        frames made once in the shared cache (it serves as the pair's flow and as the flow
        beyond for the pair before)."""
        motion = PLATE_PREALIGN_MOTION if self._plates(target, source) is not None else 0.0

        def make():
            return flowlib.flow_between(target, source, self.settings.prealign, self._dis, self._aligned, motion)
        if self._adjacent_plates(target, source) is None:
            return make()
        return self._adjacent.get_or((target.tag, source.tag), make)

    def _extrapolated(self, target: flowlib.FlowFrame, source: flowlib.FlowFrame, forward: np.ndarray):
        """``forward`` from plate frame t to plate frame s = t +- 1, deep in t's hole taking the
        motion from s to the frame beyond it (2s - t) where s shows it (flow.extrapolate);
        unchanged for other pairs, or without that frame among ``source_frames``."""
        pair = self._adjacent_plates(target, source)
        if self.source_frames is None or pair is None:
            return forward
        t, s = pair
        beyond = 2 * s - t
        if beyond not in self.source_frames:
            return forward
        return flowlib.extrapolate(forward, lambda: self._between(source, self.plate_frame(beyond)[2]),
                                   self.plate_frame(t)[1], self.plate_frame(s)[1])

    def find_flows(self, pixels: np.ndarray, mask: np.ndarray, key_frames: Sequence[int],
                   source_candidates: Sequence[int], frame: int, carried: bool,
                   pairs: Optional[int] = None) -> None:
        """What :meth:`fill` of ``frame`` will ask of the flows, found ahead (a lookahead
        thread, core.api, while the frame before is filled): the target prepared, its flows
        to its keyframes and to the plate sources the search tries, and (``carried``: the
        frame before is filled in the same window) to the frame before. The values are those
        the fill would make itself (the same calls, kept in the shared caches until the
        fill of ``frame`` ends), so the pixels do not change.

        ``pairs``: a part of the search only (choose_sources' ``pairs``), and nothing after it
        when the search stops there."""
        _, hole, target_flow = self.plate_frame(frame, lambda: (pixels, mask))
        for k in key_frames:
            self._flow(target_flow, self.keyframe(k)[2], ("key", k))
        if self._searches_plate(key_frames, source_candidates):
            if self.choose_sources(target_flow, hole, source_candidates, self.settings.max_sources - len(key_frames),
                                   farther=self.looks_farther(key_frames, carried and self._carries()),
                                   pairs=pairs) is None:
                return
        if carried and self._carries():
            self._flow(target_flow, self.plate_frame(frame - 1)[2])

    def _searches_plate(self, key_frames, source_candidates) -> bool:
        """Whether a fill with these keyframes looks for plate frames among the candidates."""
        s = self.settings
        return (s.plate_sources or len(key_frames) < 2) and bool(source_candidates) and self.source_loader is not None

    @staticmethod
    def looks_farther(key_frames: Sequence[int], carried: bool) -> bool:
        """Whether a fill's search looks farther for its sources (choose_sources' ``farther``):
        a fill without keyframes that carries nothing from the frame before."""
        return not key_frames and not carried

    def _refines(self) -> bool:
        """Whether a fused_base model corrects each whole fused fill afterwards (``refine``)."""
        return bool(self.settings.refine and getattr(self.engine, "fused_base", False))

    def _carries(self) -> bool:
        """Whether a fill takes the frame before's fill as a source (core.temporal)."""
        return self.settings.temporal and self.settings.warp_blend and self.source_loader is not None

    def find_pair(self, frame: int, pixels: np.ndarray, mask: np.ndarray, source) -> None:
        """One of :meth:`find_flows`' parts, for threads that share a frame's search: the
        target prepared and its flow to keyframe ``("key", k)`` or plate frame ``source``
        (the fill then finds it made)."""
        _, _, target_flow = self.plate_frame(frame, lambda: (pixels, mask))
        key = source if isinstance(source, tuple) else ("plate", source)
        if self._flows.has(target_flow.tag, key):
            return   # made, or under way on another thread: nothing to wait for here
        if isinstance(source, tuple):
            self._flow(target_flow, self.keyframe(source[1])[2], key)
        else:
            self._flow(target_flow, self.plate_frame(source)[2], key)

    def done_with(self, frame: int) -> None:
        """Drop the flows found for target ``frame`` (its fill has ended)."""
        self._flows.discard(("plate", frame))

    def choose_sources(self, target: flowlib.FlowFrame, hole, candidates: Sequence[int], limit: int,
                       farther: bool = False, pairs: Optional[int] = None):
        """Plate frames that show the target's hole once aligned, nearest first then spread out.

        Candidates are tried in the order given (``source_candidates``: +-1, +-2, +-4, ...).
        Each one's flow maps the target's hole into it; hole pixels landing inside the frame
        and outside that frame's own hole count as revealed. A candidate is kept when it
        reveals at least MIN_SOURCE_GAIN of the hole that earlier picks left unrevealed;
        the search stops at ``limit`` sources or once 98 % of the hole is revealed.

        ``farther`` (a fill without keyframes that carries nothing from the frame before: a
        window's first frame): with ``limit`` sources kept and less than 98 % revealed, the
        search goes on; a later candidate takes the place of the kept source that alone
        reveals least when that reveals at least MIN_SOURCE_GAIN more. A slow occluder's
        nearest frames each reveal a sliver: keyless 32-frame bbb_walker's window starts
        kept +-1 and +-2 (together 40 % of the hole; +8 alone shows all of it), and the
        network invented the rest, which the window's later frames carried on
        (bench/real_quality.py --frames 32 --no-keys: 24.82 -> 25.59 dB mean, carphone_walker
        20.89 -> 23.13; keyed fills have their keyframes: unchanged).

        ``pairs`` (a search in parts, core.api's lookahead): the search makes at most that
        many of its candidates' DIS pairs (core.flow: the costly part of a flow; a pair the
        search of a frame before made is taken as made) and stops before the next, returning
        None; called again, it goes on from there.

        Depends only on the inputs. Returns [(frame, flow, error)], in the candidates' order.
        """
        h, w = hole.shape
        ys, xs = np.nonzero(hole > 0)
        if ys.size == 0 or limit <= 0:
            return []
        kept: Dict[int, tuple] = {}   # candidate -> (flow, error, what it reveals)
        tried = []

        def revealed(picks) -> np.ndarray:
            out = np.zeros(ys.size, bool)
            for c in picks:
                out |= kept[c][2]
            return out

        stopped = False
        try:
            for cand in candidates:
                full = len(kept) >= limit
                if full and not farther:
                    break
                _, src_hole, src_flow = self.plate_frame(cand)
                if pairs is not None and not self._paired(target, src_flow):
                    if pairs == 0:
                        stopped = True
                        break
                    pairs -= 1
                tried.append(cand)
                f, e = self._flow(target, src_flow)
                qx = np.rint(xs + f[ys, xs, 0]).astype(int)
                qy = np.rint(ys + f[ys, xs, 1]).astype(int)
                inside = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
                seen = np.zeros(ys.size, bool)
                seen[inside] = src_hole[qy[inside], qx[inside]] == 0
                if not full:
                    if (seen & ~revealed(kept)).sum() >= MIN_SOURCE_GAIN * ys.size:
                        kept[cand] = (f, e, seen)
                else:
                    # The kept source whose place costs least: what it alone reveals.
                    alone = {c: (kept[c][2] & ~revealed([d for d in kept if d != c])).sum() for c in kept}
                    weakest = min(kept, key=lambda c: (alone[c], -list(kept).index(c)))
                    rest = revealed([d for d in kept if d != weakest])
                    if (seen & ~rest).sum() - alone[weakest] < MIN_SOURCE_GAIN * ys.size:
                        continue
                    del kept[weakest]
                    kept[cand] = (f, e, seen)
                if revealed(kept).mean() >= 0.98:
                    break
        finally:
            if not stopped:   # a search in parts is noted once whole
                self._searched(target, tried, farther)
        if stopped:
            return None
        order = {c: i for i, c in enumerate(candidates)}
        return [(c, kept[c][0], kept[c][1]) for c in sorted(kept, key=order.get)]

    def _paired(self, target: flowlib.FlowFrame, source: flowlib.FlowFrame) -> bool:
        """Whether the flow target -> source, or its frames' DIS pair, is made or under way."""
        return self._flows.has(target.tag, source.tag) or \
            self._dis.get(flowlib.pair_key(target.tag, source.tag)) is not None

    def _searched(self, target: flowlib.FlowFrame, tried: List[int], farther: bool = False) -> None:
        """Note a plate target's usual search's tries (ShotCaches.last_search), the latest
        target's; not those of one that looked farther (``farther``), whose tries say nothing
        of a usual search's."""
        if not farther and isinstance(target.tag, tuple) and target.tag[0] == "plate":
            frame = target.tag[1]
            latest = self.shared.last_search[0]
            if latest is None or frame >= latest:
                self.shared.last_search = (frame, tuple(c - frame for c in tried))

    def fill(self, pixels: np.ndarray, mask: np.ndarray, key_frames: Sequence[int],
             source_candidates: Sequence[int] = (), frame: Optional[int] = None) -> np.ndarray:
        """Composite the fill into ``pixels`` (H, W, C) where ``mask`` (H, W) says.

        Sources: the given keyframes first, then (``plate_sources``, or fewer than two
        keyframes) plate frames from ``source_candidates`` chosen by :meth:`choose_sources`,
        up to ``max_sources`` in all; with none, the frame itself (single-image inpainting).
        Returns a new array; pixels with zero composite weight are copied unchanged.
        """
        try:
            return self._fill(pixels, mask, key_frames, source_candidates, frame)
        finally:
            if frame is not None:
                self.done_with(frame)

    def _fill(self, pixels, mask, key_frames, source_candidates, frame):
        roi, s = self.roi, self.settings
        if frame is not None and self.source_loader is not None:
            target, hole, target_flow = self.plate_frame(frame, lambda: (pixels, mask))
        else:
            target, hole = self._prepare(pixels, mask)
            target_flow = self._flow_frame(target, hole, None)
        # Where the fill is seen (the composite's reach, at working size), and the plate there
        # unzeroed: the gradient-domain solve meets the plate exactly where the composite does.
        alpha, region, at, origin = self._reach(mask, hole)
        plate_work = roi.resize_to_work(self._display(self._crop(pixels)))
        carried = self._carried(frame, target_flow, at, origin) if self._carries() else None
        sources = self._sources(target_flow, hole, key_frames, source_candidates, frame, at, origin,
                                farther=self.looks_farther(key_frames, carried is not None))
        # The nearest keyframe's detail at plate size (_restore_detail): the first source's.
        detail_key = (0, self.keyframe(key_frames[0])[1], sources[0][1], sources[0][2]) if key_frames else None
        target_box, hole_box, region_box, plate_box = target[at], hole[at], region[at], plate_work[at]
        warps = []
        if s.warp_blend and sources:
            warps = [Warped(match_colour(w, target_box, hole_box, be) if s.colour_match else w, be, dist, src_frame)
                     for _, _, _, w, be, dist, src_frame in sources]
        if carried is not None:
            warps.append(carried)
        refine = self._refines()
        context = self._context_kind(hole_box, [w.error for w in warps], refine)
        if context == "surroundings":
            context = context_fill(target_box, hole_box)
        elif context == "network":
            context = self._network_context(frame, target, hole, sources, at)
        share = None
        if warps:
            fused = fuse(warps, target_box, hole_box, context)
            fill, labels = fused.fill, fused.labels
            if s.gradient_domain:
                fill = poisson_fill(fill, plate_box, region_box, *guidance(fused.sources, fused.weights))
            if detail_key is not None:
                share = np.zeros(hole.shape, np.float32)
                share[at] = fused.weights[detail_key[0]]
        else:
            fill, labels = context, np.full(hole_box.shape, -1, np.int16)
            if s.gradient_domain:   # the network's fill meets the plate without an edge too
                fill = poisson_fill(fill, plate_box, region_box)
        # Back to the working area: the plate outside the box (the region and the composite's
        # resampling reach lie inside it), no source outside it.
        whole = plate_work.astype(np.float32, copy=True)
        whole[at] = fill
        fill = whole
        self.last_labels = np.full(hole.shape, -1, np.int16)
        self.last_labels[at] = labels
        if refine:
            fill = self._network_fill(target, hole, sources, base=fill)
        self._previous = (frame, np.where(region[:, :, None], fill, plate_work).astype(np.float32)) \
            if frame is not None and s.temporal else None
        # From here on at plate size, over the box the composite reaches only (a wire's band
        # of a 4K ROI): every pixel outside it stays the plate's.
        box = mask_bbox(alpha)
        if box is None:
            return self._composite(pixels, np.zeros(alpha.shape + (3,), np.float32), alpha)
        y0, x0, y1, x1 = box
        fill = roi.to_plate(fill)[y0:y1, x0:x1]
        if s.detail and roi.scale < 0.999 and detail_key is not None:
            _, key_plate, f, e = detail_key
            # The keyframe's detail only where the keyframe is what fills (another source's
            # region would get the keyframe's texture over its own: a ghost).
            share = share if share is not None else np.ones(hole.shape, np.float32)
            fill = self._restore_detail(fill, key_plate, f.transpose(2, 0, 1), e, share, box)
        fill = np.clip(fill, 0.0, 1.0)
        if self.linear:
            fill = color.to_linear(fill).astype(np.float32)
        return self._composite(pixels, fill, alpha[y0:y1, x0:x1], (y0, x0))

    def _reach(self, mask: np.ndarray, hole: np.ndarray):
        """(composite alpha at plate size, where the fill is seen at working size, the fusion
        box as two slices of the working area, its top-left pixel (x, y)). The sources are
        warped, weighed and solved over the frame's hole and region and a margin
        (fusion_box), not the whole working area: a walker's ROI spans its whole path."""
        alpha = composite_alpha(self._crop(mask), self.settings.dilate, self.settings.feather)
        region = self.roi.resize_to_work(alpha) > 0
        y0, x0, y1, x1 = fusion_box(hole, region)
        return alpha, region, (slice(y0, y1), slice(x0, x1)), (x0, y0)

    def _sources(self, target_flow, hole, key_frames, source_candidates, frame, at, origin,
                 farther: bool = False) -> list:
        """The fill's sources, keyframes first, then the plate frames its search chooses
        (``farther``: choose_sources' for a fill that carries nothing): per
        source (handle maker, flow, error, warped pixels, error for the blend, distance,
        frame); flows and errors over the working area (the network's), the rest over the
        fusion box ``at`` (whose top-left pixel is ``origin``)."""
        sources = []
        here = frame if frame is not None else 0
        for k in key_frames:
            key_work, _, key_flow = self.keyframe(k)
            f, e = self._flow(target_flow, key_flow, ("key", k))
            sources.append((lambda box=None, k=k: self._key_handle(k, box), f, e, flowlib.warp(key_work, f[at], origin=origin), e[at],
                            abs(k - here) if frame is not None else 0, k))
        if self._searches_plate(key_frames, source_candidates):
            for cand, f, e in self.choose_sources(target_flow, hole, source_candidates,
                                                  self.settings.max_sources - len(key_frames), farther):
                src, src_hole, _ = self.plate_frame(cand)
                # Where the source's own hole lands, its warped pixels are no evidence at all, nor
                # next to it (bilinear samples there mix in the zeroed hole: a dark rim whose
                # gradients the gradient-domain composite would carry in).
                lands = flowlib.warp(cv2.dilate(src_hole, SOURCE_HOLE_RIM), f[at], origin=origin)
                blend_err = np.where(lands > 0, flowlib.OUT_OF_FRAME_ERROR, e[at])
                sources.append((lambda box=None, c=cand: self._plate_handle(c, box), f, e, flowlib.warp(src, f[at], origin=origin),
                                blend_err, abs(cand - here) if frame is not None else 0, cand))
        return sources

    @staticmethod
    def _context_kind(hole_box: np.ndarray, errors: Sequence[np.ndarray], refine: bool) -> Optional[str]:
        """What fills the hole pixels that no source shows (a source shows the pixels where its
        blend error, one of ``errors``, is below OUT_OF_FRAME_ERROR): None (there are none),
        "surroundings" (context_fill) or "network". The network runs only where some hole
        pixel has no source that shows it; its fill then competes with the sources near the
        hole's border (core.fusion's context candidate). ``refine``: a fused_base model
        corrects the whole fused fill afterwards, and the context is then Telea's fill, as in
        the examples the model was trained on."""
        shown = np.zeros(hole_box.shape, bool)
        for e in errors:
            shown |= e < flowlib.OUT_OF_FRAME_ERROR
        unshown_mask = (hole_box > 0) & ~shown
        unshown = int(unshown_mask.sum())
        if errors and unshown == 0:
            return None
        if refine or (errors and (unshown <= SMALL_UNSHOWN * (hole_box > 0).sum() or thin(unshown_mask))):
            # A sliver or a thin stripe no source shows (where a flow leaves the frame at the
            # hole's end, a static wire's unrevealed stretch): the surroundings fill it as well
            # as the network would (a context_base model refines this same Telea fill),
            # without a network pass.
            return "surroundings"
        return "network"

    def _network_context(self, frame, target, hole, sources, at) -> np.ndarray:
        """The network's fill over the fusion box ``at``, made once for a plate target while it
        is in work: a lookahead thread may have made it (:meth:`network_ahead`)."""
        def make():
            return self._network_fill(target, hole, sources, within=at)[at]
        if frame is None or self.source_loader is None:
            return make()
        return self._flows.get_or(("plate", frame), "network", make)

    def network_ahead(self, pixels: np.ndarray, mask: np.ndarray, key_frames: Sequence[int],
                      source_candidates: Sequence[int], frame: int) -> bool:
        """On a lookahead thread (core.api), once :meth:`find_flows` has found ``frame``'s
        flows: the network's fill of a frame that carries no fill from the frame before (a
        window's first frame), made ahead when its fill will want it. Its sources, their
        blend errors and the rule are the fill's own (:meth:`_context_kind`), so the fill
        finds the same values made. Returns whether the network ran.

        A window start with much of its hole shown by no source runs the network: a pass
        at 1280x720 cost 0.8-1.1 s against a 0.3-0.4 s frame (32-frame keyless bbb_walker,
        before its window starts looked farther for sources). Made here, it overlaps the
        fill of the frame before: those window starts took 0.9-1.3 s instead of 1.2-1.6."""
        if self._refines():
            return False
        target, hole, target_flow = self.plate_frame(frame, lambda: (pixels, mask))
        _, _, at, origin = self._reach(mask, hole)
        sources = self._sources(target_flow, hole, key_frames, source_candidates, frame, at, origin,
                                farther=self.looks_farther(key_frames, False))
        errors = [src[4] for src in sources] if self.settings.warp_blend else []
        if self._context_kind(hole[at], errors, False) != "network":
            return False
        self._network_context(frame, target, hole, sources, at)
        return True

    @property
    def previous_frame(self) -> Optional[int]:
        """The frame filled last (its fill is carried to the next frame of its window)."""
        return self._previous[0] if self._previous is not None else None

    def _carried(self, frame, target_flow, at, origin) -> Optional[Warped]:
        """The previous frame's fill as a source of ``frame`` (core.temporal): when it was
        ``frame - 1``, in the same window; warped along the flow to that frame's plate, over
        the part ``at`` (slices) of the working area whose top-left pixel is ``origin`` (x, y)."""
        if frame is None or self._previous is None:
            return None
        prev, composed = self._previous
        if prev != frame - 1 or not same_window(prev, frame):
            return None
        f, e = self._flow(target_flow, self.plate_frame(prev)[2])
        return Warped(flowlib.warp(composed, f[at], origin=origin), e[at], 1, prev)

    def _network_fill(self, target, hole, sources, base: Optional[np.ndarray] = None,
                      within: Optional[tuple] = None) -> np.ndarray:
        """The network's fill (h, w, 3) at working size from the given sources (or the frame
        itself, holed, when there are none: single-image inpainting); ``base`` (h, w, 3): the
        fused fill a fused_base model corrects. ``within`` (two slices): only that part of the
        fill is wanted; with sources, on an engine that runs any size (``min_side``), the pass
        covers that part grown to whole strides (network_box) and the rest is zeros."""
        box = network_box(within, hole.shape, self.engine) if within is not None and sources and base is None \
            else None
        if box is not None:
            fill = np.zeros(hole.shape + (3,), np.float32)
            fill[box] = self._network_fill(target[box], hole[box],
                                           [(lambda _=None, make=make: make(box), f[box], e[box]) + tuple(rest)
                                            for make, f, e, *rest in sources])
            return fill
        net_input = self._net_input(target, hole)
        if sources:
            handles = [make() for make, *_ in sources]
            flows = [f for _, f, *_ in sources]
            errs = [e for _, _, e, *_ in sources]
        else:   # the same array: an engine that prefills holes does it once
            handles = [self.engine.encode_keyframe(net_input)]
            flows = [np.zeros(hole.shape + (2,), np.float32)]
            errs = [np.zeros(hole.shape, np.float32)]
        fill = self.engine.fill(net_input, handles,
                                np.stack([f.transpose(2, 0, 1) for f in flows]),
                                np.stack([e[None] for e in errs]),
                                None if base is None else np.ascontiguousarray(base.transpose(2, 0, 1)))  # (3, h, w)
        return np.ascontiguousarray(fill.transpose(1, 2, 0))

    def _restore_detail(self, fill, key_plate, flow_work, err_work, share=None, box=None):
        """Add the nearest keyframe's high frequencies, warped at plate resolution, where flow
        agrees (and, given ``share`` (h, w) at working size, in proportion to it). ``box``
        (y0, x0, y1, x1): ``fill`` is that part of the ROI at plate size (default: all of it);
        the result is what the whole ROI's would hold there."""
        roi = self.roi
        y0, x0, y1, x1 = box if box is not None else (0, 0, roi.height, roi.width)
        # High frequencies above what the working size kept, per axis (an axis not reduced
        # lost nothing: no blur along it).
        # (A sigma of 1e-6 makes OpenCV's kernel one tap wide: the identity.)
        sx, sy = (0.6 / s if s < 0.999 else 1e-6 for s in (roi.scale_x, roi.scale_y))
        # The box grown by the blur's reach (OpenCV's kernel: 4 sigma a side), or to the ROI's
        # edge where the whole ROI's blur meets the same border.
        px, py = int(np.ceil(4 * sx)) + 2, int(np.ceil(4 * sy)) + 2
        gy0, gx0, gy1, gx1 = max(0, y0 - py), max(0, x0 - px), min(roi.height, y1 + py), min(roi.width, x1 + px)
        flow_plate = roi.flow_to_plate(np.ascontiguousarray(flow_work.transpose(1, 2, 0)))[gy0:gy1, gx0:gx1]
        warped = flowlib.warp(key_plate, flow_plate, origin=(gx0, gy0))
        detail = (warped - cv2.GaussianBlur(warped, (0, 0), sx, sigmaY=sy))[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0]
        # Error in working pixels; resized linearly (cubic rings below 0 next to large errors).
        err = cv2.resize(np.clip(err_work, 0, 50).astype(np.float32), (roi.width, roi.height),
                         interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        reliable = np.exp(-err)
        if share is not None:
            reliable = reliable * cv2.resize(share.astype(np.float32), (roi.width, roi.height),
                                             interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        return fill + reliable[:, :, None] * detail

    def _composite(self, pixels, fill, alpha, at=(0, 0)):
        """``fill`` and ``alpha`` cover the ROI from ``at`` (row, column in the ROI)."""
        roi = self.roi
        inside = pixels.shape[:2] == (roi.height, roi.width)
        return composite(pixels, fill, alpha, (at[0], at[1]) if inside else (roi.y0 + at[0], roi.x0 + at[1]))

    def labels_at_plate(self, shape) -> np.ndarray:
        """The last fill's source labels (see :class:`fusion.Fusion`) in a frame of ``shape``
        (H, W) at plate size: -2 outside the ROI."""
        roi = self.roi
        out = np.full(shape, -2, np.int16)
        region = out if shape == (roi.height, roi.width) else out[roi.y0:roi.y1, roi.x0:roi.x1]
        region[...] = cv2.resize(self.last_labels, (roi.width, roi.height), interpolation=cv2.INTER_NEAREST)
        return out


def fusion_box(hole: np.ndarray, region: np.ndarray, margin: Optional[int] = None) -> tuple:
    """(y0, x0, y1, x1) of the working area a fill's fusion covers: the hole's and the
    region's bounding box grown by ``margin`` pixels (default FUSION_MARGIN) within the area;
    all of it for neither."""
    margin = FUSION_MARGIN if margin is None else margin
    h, w = hole.shape
    box = mask_bbox((hole > 0) | region)
    if box is None:
        return 0, 0, h, w
    y0, x0, y1, x1 = box
    return max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)


def network_box(within: tuple, shape: Tuple[int, int], engine) -> Optional[tuple]:
    """Two slices of the working area (``shape``) that contain ``within`` (two slices), grown to
    whole strides of ``engine`` and at least its ``min_side`` a side (centred on ``within``,
    moved inside the area); None for an engine without ``min_side`` (fixed-size graphs: ONNX)
    or where the box would be most of the area anyway (NETWORK_BOX_SHARE).

    A window start with much of its hole shown by no source ran the network over the whole
    working area: four sources encoded and one pass, 1.7-2.3 s a frame at 1280x720 against a
    0.3-0.4 s median (32-frame keyless walkers). Over the fusion box (the hole and region
    and FUSION_MARGIN around them) it costs 40-45 % of that (bbb_walker)."""
    min_side = getattr(engine, "min_side", None)
    if min_side is None:
        return None
    stride = int(engine.stride)

    def grow(part: slice, n: int):
        size = min(n, max(-(-(part.stop - part.start) // stride) * stride, -(-int(min_side) // stride) * stride))
        start = min(max(0, part.start - (size - (part.stop - part.start)) // 2), n - size)
        return slice(start, start + size)

    box = (grow(within[0], shape[0]), grow(within[1], shape[1]))
    if (box[0].stop - box[0].start) * (box[1].stop - box[1].start) > NETWORK_BOX_SHARE * shape[0] * shape[1]:
        return None
    return box


def thin(region: np.ndarray, radius: float = THIN_UNSHOWN) -> bool:
    """Whether no pixel of ``region`` (H, W) bool lies farther than ``radius`` pixels from
    a pixel outside it."""
    if not region.any():
        return True
    inside = np.pad(region, 1, constant_values=True).astype(np.uint8)   # the frame edge is not outside
    return float(cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1].max()) <= radius


def source_candidates(frame: int, available) -> List[int]:
    """Plate frames to try as sources for ``frame``, nearest first then spread out."""
    return [frame + d for d in SOURCE_OFFSETS if frame + d in available]
