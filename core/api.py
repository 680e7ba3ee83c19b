"""The shot pipeline: ``propagate(shot, settings)`` fills a shot's masked regions from its keyframes.

Per target frame (streamed: read, fill, write, one at a time)::

    plate, mask --crop to ROI--> display-referred [0, 1] --resize--> working size
    keyframes (nearest before/after, at most max_keys) and plate frames that show the hole
    --> DIS flow target->source (completed in the hole) + consistency error
    --> warped sources, exposure-matched, fused per pixel (engine.fill only where no source
    shows a hole pixel; keyframes are encoded for it the first time it runs)
    -> fill at working size -> plate size (+ keyframe detail where the warp is reliable)
    -> scene-linear if the plate is -> composited inside the mask only

Each frame is prepared for flow once (``flow.FlowFrame``) however many flows it takes part
in, and the completed DIS flows between two plate frames serve the reverse pair too.

Pixels where the (dilated, feathered) mask is 0 are the plate's, bit for bit; alpha and
other channels pass through. Outputs are written to a temporary name and renamed.

Hosts call :func:`propagate` (files) or :func:`fill_frames` (arrays in memory).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np

from . import color, io
from . import flow as flowlib
from .composite import composite, composite_alpha, guidance, network_hole, poisson_fill
from .fusion import Warped, fuse, match_colour
from .temporal import chain, same_window
from .errors import KeypropInputError
from .roi import ROI, mask_bbox, plan_roi, union_bbox
from .shot import Shot, expand, plan_keyframes, scan

__all__ = ["Settings", "FrameEvent", "Result", "ShotFiller", "propagate", "fill_frames", "source_candidates",
           "composite_alpha", "network_hole", "Shot", "expand", "scan", "plan_keyframes"]

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """What a run may change; the CLI's flags and a job YAML's keys have these names."""

    model: Optional[str] = None      # keyprop .pt file; None = the shipped default model
    backend: str = "torch"           # 'torch' or 'onnx'
    device: str = "auto"             # 'auto', 'cpu' or 'cuda'
    dilate: int = 0                  # grow the mask by this many pixels before compositing
    feather: float = 0.0             # soften the composite edge (pixels, Gaussian sigma)
    max_keys: int = 2                # keyframes that serve one target (nearest first)
    max_sources: int = 4             # sources per target when plate frames stand in for keyframes
    work_res: int = 640              # long side of the ROI at the network
    margin: float = 0.5              # context around the masks' bounding box, fraction of its size
    linear: Optional[bool] = None    # plate is scene-linear; None = EXR/float linear, integers display
    detail: bool = True              # restore plate-resolution keyframe detail where the ROI was downscaled
    warp_blend: bool = True          # take the flow-warped sources where their flow is consistent
    plate_sources: bool = True       # plate frames that show the hole serve beside keyframes
    colour_match: bool = True        # match each warped source's exposure to the target
    prealign: bool = True            # pre-align sources by a feature homography before DIS
    gradient_domain: bool = True     # compose the fill in the gradient domain (no seams at the border or between sources)
    temporal: bool = True            # carry each frame's fill to the next frame of its window (core.temporal)
    threads: Optional[int] = None    # CPU threads for the engine (None = all)

    @classmethod
    def from_mapping(cls, data: dict, where: str = "settings") -> "Settings":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeypropInputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
                                    where)
        return cls(**data)


# --- progress -----------------------------------------------------------------------------

@dataclass
class FrameEvent:
    frame: int
    status: str          # 'filled', 'keyframe', 'passthrough' (empty mask), 'skipped' (resume)
    done: int
    total: int
    seconds: float
    path: str = ""


ProgressFn = Callable[[FrameEvent], None]


@dataclass
class Result:
    frames: List[int] = field(default_factory=list)
    statuses: Dict[int, str] = field(default_factory=dict)
    cancelled: bool = False
    model_info: Dict = field(default_factory=dict)
    roi: Optional[ROI] = None


# --- the per-shot filler --------------------------------------------------------------------

def _rgb3(pixels: np.ndarray) -> np.ndarray:
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
# What a plate source cannot show: its own hole and a rim of this many working pixels.
SOURCE_HOLE_RIM = np.ones((5, 5), np.uint8)
class _LRU(OrderedDict):
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


class ShotFiller:
    """Fills targets of one shot at one ROI against keyframes encoded once (lazily).

    ``key_loader(frame) -> (H, W, C)`` plate-valued keyframe pixels; ``source_loader(frame)
    -> (pixels, mask)`` a plate frame and its mask, for shots filled from their own frames;
    ``linear`` says whether pixel values are scene-linear (converted to display for the
    network). Loaders may return full frames or their ROI crops (an ROI-sized array is
    taken as a crop), and :meth:`fill` takes either too: a crop in, the filled crop out.
    """

    def __init__(self, engine, roi: ROI, settings: Settings, linear: bool,
                 key_loader: Callable[[int], np.ndarray],
                 source_loader: Optional[Callable[[int], tuple]] = None):
        self.engine, self.roi, self.settings, self.linear = engine, roi, settings, linear
        self.key_loader, self.source_loader = key_loader, source_loader
        self._keys: Dict[int, tuple] = {}                     # keyframe -> (work RGB, ROI RGB, FlowFrame)
        self._key_handles: Dict[int, object] = {}             # keyframe -> engine handle (when the network runs)
        self._plate = _LRU(2 * len(SOURCE_OFFSETS) + 2)      # frame -> (work RGB with hole zeroed, hole, FlowFrame)
        self._encoded = _LRU(max(4, settings.max_sources + 2))  # frame -> engine handle
        # DIS flows both ways between two plate frames, completed in the holes: frame t's
        # pair with t+1 serves t+1's with t.
        self._dis = _LRU(2 * settings.max_sources)
        self.last_labels: Optional[np.ndarray] = None          # the last fill's source labels (working size)
        self._previous: Optional[tuple] = None                 # (frame, its fill composed at working size)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        """The ROI of a full frame; an ROI-sized array is taken as already cropped."""
        roi = self.roi
        return image if image.shape[:2] == (roi.height, roi.width) else roi.crop(image)

    def _display(self, pixels: np.ndarray) -> np.ndarray:
        rgb = _rgb3(pixels).astype(np.float32)
        rgb = color.to_display(rgb) if self.linear else rgb
        return np.clip(rgb, 0.0, 1.0).astype(np.float32)

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
        if frame not in self._keys:
            crop = self._display(self._crop(self.key_loader(frame)))
            work = self.roi.resize_to_work(crop)
            # No tag: a keyframe's flows are never asked for the other way round.
            self._keys[frame] = (work, crop, self._flow_frame(work, None, None))
        return self._keys[frame]

    def _key_handle(self, frame: int):
        """The engine's encoding of a keyframe, made the first time the network runs."""
        if frame not in self._key_handles:
            work = self.keyframe(frame)[0]
            self._key_handles[frame] = self.engine.encode_keyframe(
                self._net_input(work, np.zeros(work.shape[:2], np.float32)))
            log.debug("encoded keyframe %d at %dx%d", frame, work.shape[1], work.shape[0])
        return self._key_handles[frame]

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

    def _plate_handle(self, frame: int):
        return self._encoded.get_or(frame, lambda: self.engine.encode_keyframe(self._net_input(*self.plate_frame(frame)[:2])))

    def _flow(self, target: flowlib.FlowFrame, source: flowlib.FlowFrame):
        return flowlib.flow_between(target, source, self.settings.prealign, self._dis)

    def choose_sources(self, target: flowlib.FlowFrame, hole, candidates: Sequence[int], limit: int):
        """Plate frames that show the target's hole once aligned, nearest first then spread out.

        Candidates are tried in the order given (``source_candidates``: +-1, +-2, +-4, ...).
        Each one's flow maps the target's hole into it; hole pixels landing inside the frame
        and outside that frame's own hole count as revealed. A candidate is kept when it
        reveals at least MIN_SOURCE_GAIN of the hole that earlier picks left unrevealed;
        the search stops at ``limit`` sources or once 98 % of the hole is revealed. Depends
        only on the inputs. Returns [(frame, flow, error)].
        """
        h, w = hole.shape
        ys, xs = np.nonzero(hole > 0)
        if ys.size == 0 or limit <= 0:
            return []
        chosen, covered = [], np.zeros(ys.size, bool)
        for cand in candidates:
            _, src_hole, src_flow = self.plate_frame(cand)
            f, e = self._flow(target, src_flow)
            qx = np.rint(xs + f[ys, xs, 0]).astype(int)
            qy = np.rint(ys + f[ys, xs, 1]).astype(int)
            inside = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
            seen = np.zeros(ys.size, bool)
            seen[inside] = src_hole[qy[inside], qx[inside]] == 0
            if (seen & ~covered).sum() < MIN_SOURCE_GAIN * ys.size:
                continue
            covered |= seen
            chosen.append((cand, f, e))
            if len(chosen) >= limit or covered.mean() >= 0.98:
                break
        return chosen

    def fill(self, pixels: np.ndarray, mask: np.ndarray, key_frames: Sequence[int],
             source_candidates: Sequence[int] = (), frame: Optional[int] = None) -> np.ndarray:
        """Composite the fill into ``pixels`` (H, W, C) where ``mask`` (H, W) says.

        Sources: the given keyframes first, then (``plate_sources``, or fewer than two
        keyframes) plate frames from ``source_candidates`` chosen by :meth:`choose_sources`,
        up to ``max_sources`` in all; with none, the frame itself (single-image inpainting).
        Returns a new array; pixels with zero composite weight are copied unchanged.
        """
        roi, s = self.roi, self.settings
        if frame is not None and self.source_loader is not None:
            target, hole, target_flow = self.plate_frame(frame, lambda: (pixels, mask))
        else:
            target, hole = self._prepare(pixels, mask)
            target_flow = self._flow_frame(target, hole, None)
        # Per source: (handle maker, flow, error, warped pixels, error for the blend, distance).
        sources, detail_key = [], None
        here = frame if frame is not None else 0
        for k in key_frames:
            key_work, key_plate, key_flow = self.keyframe(k)
            f, e = self._flow(target_flow, key_flow)
            detail_key = (len(sources), key_plate, f, e) if detail_key is None else detail_key
            sources.append((lambda k=k: self._key_handle(k), f, e, flowlib.warp(key_work, f), e,
                            abs(k - here) if frame is not None else 0, k))
        use_plate = s.plate_sources or len(key_frames) < 2
        if use_plate and source_candidates and self.source_loader is not None:
            for cand, f, e in self.choose_sources(target_flow, hole, source_candidates,
                                                  s.max_sources - len(key_frames)):
                src, src_hole, _ = self.plate_frame(cand)
                # Where the source's own hole lands, its warped pixels are no evidence at all, nor
                # next to it (bilinear samples there mix in the zeroed hole: a dark rim whose
                # gradients the gradient-domain composite would carry in).
                blend_err = np.where(flowlib.warp(cv2.dilate(src_hole, SOURCE_HOLE_RIM), f) > 0,
                                     flowlib.OUT_OF_FRAME_ERROR, e)
                sources.append((lambda c=cand: self._plate_handle(c), f, e, flowlib.warp(src, f), blend_err,
                                abs(cand - here) if frame is not None else 0, cand))
        carried = self._carried(frame, target_flow) if s.temporal and s.warp_blend else None
        warps = []
        if s.warp_blend and sources:
            warps = [Warped(match_colour(w, target, hole, be) if s.colour_match else w, be, dist, src_frame)
                     for _, _, _, w, be, dist, src_frame in sources]
        if carried is not None:
            warps.append(carried)
        shown = np.zeros(hole.shape, bool)
        for w in warps:
            shown |= w.error < flowlib.OUT_OF_FRAME_ERROR
        # The network runs only where some hole pixel has no source that shows it (elsewhere its
        # share would be under NETWORK_WEIGHT / (1 + NETWORK_WEIGHT), 0.1 %).
        network = None if warps and shown[hole > 0].all() else self._network_fill(target, hole, sources)
        if warps:
            fused = fuse(warps, target, hole, network)
            fill, weights, labels = fused.fill, fused.weights, fused.labels
            if s.gradient_domain:
                fill = poisson_fill(fill, target, hole, *guidance(fused.sources, weights))
        else:
            fill, weights, labels = network, None, np.full(hole.shape, -1, np.int16)
            if s.gradient_domain:   # the network's fill meets the plate without an edge too
                fill = poisson_fill(fill, target, hole)
        self.last_labels = labels
        self._previous = (frame, np.where(hole[:, :, None] > 0, fill, target).astype(np.float32)) \
            if frame is not None and s.temporal else None
        fill = roi.to_plate(fill)
        if s.detail and roi.scale < 0.999 and detail_key is not None:
            index, key_plate, f, e = detail_key
            # The keyframe's detail only where the keyframe is what fills (another source's
            # region would get the keyframe's texture over its own: a ghost).
            share = weights[index] if weights is not None else np.ones(hole.shape, np.float32)
            fill = self._restore_detail(fill, key_plate, f.transpose(2, 0, 1), e, share)
        fill = np.clip(fill, 0.0, 1.0)
        if self.linear:
            fill = color.to_linear(fill).astype(np.float32)
        return self._composite(pixels, fill, composite_alpha(self._crop(mask), s.dilate, s.feather))

    @property
    def previous_frame(self) -> Optional[int]:
        """The frame filled last (its fill is carried to the next frame of its window)."""
        return self._previous[0] if self._previous is not None else None

    def _carried(self, frame, target_flow) -> Optional[Warped]:
        """The previous frame's fill as a source of ``frame`` (core.temporal): when it was
        ``frame - 1``, in the same window; warped along the flow to that frame's plate."""
        if frame is None or self._previous is None or self.source_loader is None:
            return None
        prev, composed = self._previous
        if prev != frame - 1 or not same_window(prev, frame):
            return None
        f, e = self._flow(target_flow, self.plate_frame(prev)[2])
        return Warped(flowlib.warp(composed, f), e, 1, prev)

    def _network_fill(self, target, hole, sources) -> np.ndarray:
        """The network's fill (h, w, 3) at working size from the given sources (or the frame
        itself, holed, when there are none: single-image inpainting)."""
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
                                np.stack([e[None] for e in errs]))  # (3, h, w)
        return np.ascontiguousarray(fill.transpose(1, 2, 0))

    def _restore_detail(self, fill, key_plate, flow_work, err_work, share=None):
        """Add the nearest keyframe's high frequencies, warped at plate resolution, where flow
        agrees (and, given ``share`` (h, w) at working size, in proportion to it)."""
        roi = self.roi
        flow_plate = roi.flow_to_plate(np.ascontiguousarray(flow_work.transpose(1, 2, 0)))
        warped = flowlib.warp(key_plate, flow_plate)
        # High frequencies above what the working size kept, per axis (an axis not reduced
        # lost nothing: no blur along it).
        # (A sigma of 1e-6 makes OpenCV's kernel one tap wide: the identity.)
        sx, sy = (0.6 / s if s < 0.999 else 1e-6 for s in (roi.scale_x, roi.scale_y))
        detail = warped - cv2.GaussianBlur(warped, (0, 0), sx, sigmaY=sy)
        # Error in working pixels; resized linearly (cubic rings below 0 next to large errors).
        err = cv2.resize(np.clip(err_work, 0, 50).astype(np.float32), (roi.width, roi.height),
                         interpolation=cv2.INTER_LINEAR)
        reliable = np.exp(-err)
        if share is not None:
            reliable = reliable * cv2.resize(share.astype(np.float32), (roi.width, roi.height),
                                             interpolation=cv2.INTER_LINEAR)
        return fill + reliable[:, :, None] * detail

    def _composite(self, pixels, fill, alpha):
        roi = self.roi
        inside = pixels.shape[:2] == (roi.height, roi.width)
        return composite(pixels, fill, alpha, (0, 0) if inside else (roi.y0, roi.x0))

    def labels_at_plate(self, shape) -> np.ndarray:
        """The last fill's source labels (see :class:`fusion.Fusion`) in a frame of ``shape``
        (H, W) at plate size: -2 outside the ROI."""
        roi = self.roi
        out = np.full(shape, -2, np.int16)
        region = out if shape == (roi.height, roi.width) else out[roi.y0:roi.y1, roi.x0:roi.x1]
        region[...] = cv2.resize(self.last_labels, (roi.width, roi.height), interpolation=cv2.INTER_NEAREST)
        return out


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
    out[:, :, :3] = _rgb3(pixels)
    return out


def propagate(shot: Shot, settings: Optional[Settings] = None, engine=None,
              progress: Optional[ProgressFn] = None, cancel: Optional[threading.Event] = None,
              resume: bool = False, overwrite: bool = False) -> Result:
    """Fill every frame of ``shot`` in its range; write ``shot.out`` frames.

    Raises KeypropInputError (one line naming the file or frame) for bad input before any
    output is written where it can be detected up front (patterns, missing frames, sizes,
    unreadable masks, no keyframe, existing outputs). ``cancel`` (an Event) stops between
    frames; finished frames stay. ``resume`` keeps existing output frames; ``overwrite``
    replaces them; with neither, existing outputs are an error.
    """
    from .runtime import create_engine

    settings = settings or Settings()
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
    frame_io = _FrameIO()
    try:
        # While the masks are scanned, the reader decodes what the first frame needs: its
        # plate and its keyframes (each is taken from here once, then read as usual).
        ahead = {("plate", frames[0]): frame_io.reader.submit(io.read_frame, expand(shot.plate, frames[0]))}
        for k in (plan_keyframes(frames[0], key_frames, settings.max_keys) if key_frames else []):
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
        frames_read = _LRU(4)   # frame -> (plate Frame, mask ROI crop): the next target is often read as a source

        reading: Dict[int, object] = {}   # frame -> Future of read(frame): the next two frames at most

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

        def load(k):
            """A plate frame (file samples) and its mask's ROI crop, read once however often used."""
            future = reading.pop(k, None)
            return frames_read.get_or(k, (lambda: future.result()) if future is not None else (lambda: read(k)))

        def load_source(k):
            plate, mask = load(k)
            return plate.region(*box), mask

        filler = ShotFiller(engine, roi, settings, linear,
                            key_loader=lambda k: read_ahead("key", k, expand(shot.keys, k)).region(*box),
                            source_loader=load_source) if roi else None
        plate_with_masks = set(mask_frames)
        keys_set = set(key_frames)

        def is_filled(k):
            """Whether frame ``k`` is one the pipeline fills (on the inputs alone, not the range)."""
            if k not in plate_with_masks or k in keys_set:
                return False
            mask = read_mask_roi(k)
            return mask is not None and bool((mask > 0).any())

        def fill_one(k, plate, mask):
            plan = plan_keyframes(k, key_frames, settings.max_keys) if key_frames else []
            return filler.fill(plate.region(*box), mask, plan, source_candidates(k, plate_with_masks), k)

        total, done = len(frames), 0
        for frame in frames:
            # Decode the next frames (next targets, and the next source beyond them) while this
            # one is filled: codecs release the GIL.
            for upcoming in (frame + 1, frame + 2):
                if upcoming in plate_with_masks and upcoming not in frames_read and upcoming not in reading:
                    reading[upcoming] = frame_io.reader.submit(read, upcoming)
            if cancel is not None and cancel.is_set():
                result.cancelled = True
                log.info("cancelled after %d of %d frames", done, total)
                break
            t0 = time.perf_counter()
            out_path = expand(shot.out, frame)
            if resume and os.path.exists(out_path):
                status, job = "skipped", None
                ahead.pop(("plate", frame), None)   # the first frame, decoded ahead: not needed
            else:
                plate, mask = load(frame)
                if frame in keys_set:
                    status = "keyframe"
                    pixels = _match_channels(io.read_image(expand(shot.keys, frame)).pixels, plate.region())
                    job = (io.write_image, out_path, pixels, plate.format)
                elif filler is None or not (mask > 0).any():
                    status, job = "passthrough", (io.write_frame, out_path, plate)
                    log.info("frame %d: empty mask, plate passed through", frame)
                else:
                    if settings.temporal and filler.previous_frame != frame - 1:
                        # A run starting inside a temporal window (a chunk, a resumed run) first
                        # fills the frames before this one in its window (not written): their
                        # fills are carried to this one as they are in a full run.
                        for earlier in chain(frame, is_filled):
                            fill_one(earlier, *load(earlier))
                    plan = plan_keyframes(frame, key_frames, settings.max_keys) if key_frames else []
                    status = "filled" if plan or source_candidates(frame, plate_with_masks) else "inpainted"
                    if status == "inpainted":
                        log.warning("frame %d: no keyframe and no other frame: filled from its own context", frame)
                    filled = fill_one(frame, plate, mask)
                    job = (io.write_frame, out_path, plate, filled, (box[0], box[2]))
            # The write overlaps the next frame's fill; a frame counts as done once written.
            for event in frame_io.submit(job, (frame, status, t0, out_path)):
                done = _report(result, progress, event, done, total)
        for event in frame_io.drain():
            done = _report(result, progress, event, done, total)
        return result
    finally:
        frame_io.close()


def _report(result: Result, progress, event, done: int, total: int) -> int:
    frame, status, t0, path = event
    done += 1
    result.frames.append(frame)
    result.statuses[frame] = status
    if progress is not None:
        progress(FrameEvent(frame, status, done, total, time.perf_counter() - t0, path))
    return done


class _FrameIO:
    """Background threads for frame files: one writes frames one frame behind the fill, in
    order; one (``reader``) decodes frames ahead.

    Encoding a 4K frame costs as much as filling a small region of it; on its own thread
    (codecs release the GIL) it overlaps the next frame's work. A failed write raises in
    the caller at the next submit or drain; close() always waits, so no write is left
    running (each is atomic: a temporary file renamed).
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyprop-write")
        self._pending = None
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyprop-read")

    def submit(self, job, event):
        """Queue ``job`` (fn, *args) or None; yields the events of writes now finished."""
        finished = list(self.drain())
        future = self._pool.submit(job[0], *job[1:]) if job is not None else None
        self._pending = (future, event)
        return finished

    def drain(self):
        if self._pending is None:
            return []
        future, event = self._pending
        self._pending = None
        if future is not None:
            future.result()
        return [event]

    def close(self):
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is not None:
            try:
                pending[0].result()
            except Exception:  # noqa: BLE001 - the error that stopped the loop is the one to report
                log.debug("pending write failed while stopping", exc_info=True)
        self._pool.shutdown(wait=True)
        self.reader.shutdown(wait=True, cancel_futures=True)


# --- in memory ------------------------------------------------------------------------------

def source_candidates(frame: int, available) -> List[int]:
    """Plate frames to try as sources for ``frame``, nearest first then spread out."""
    return [frame + d for d in SOURCE_OFFSETS if frame + d in available]


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
    filler = ShotFiller(engine, roi, settings, linear, key_loader=lambda k: frames[k - first],
                        source_loader=lambda k: (frames[k - first], masks[k - first]))
    everything = set(range(first, first + len(frames)))
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
