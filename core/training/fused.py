"""Training examples for a ``fused_base`` model: the shot pipeline's own fused fill, captured.

A fused_base model (``NetConfig.fused_base``) corrects the fill that keyprop's pipeline makes
without it: warped sources weighed per pixel (core.fusion) and composed in the gradient
domain (core.composite). To learn the errors that fill makes, the network must see them, so
every example is run through the pipeline's own code:

1. :func:`keyprop.core.training.synth.make_example` draws a target and references (a still
   under camera motion, with a second layer moving on its own in some; or frames of a real
   video sequence, real motion), then :func:`_degrade` makes them look like footage: the
   occluder moves across the references as it does across a shot (or stays put, a wire), some
   references deform non-rigidly (a smooth random displacement field), some are motion
   blurred, and all frames may get grain and JPEG compression.
2. The target and references become a tiny shot (frame 100 and its neighbours). With keys
   (``keyed_prob``), the first references are clean keyframes; otherwise the plate frames are
   candidate sources, as in a keyless run.
3. :class:`core.filler.ShotFiller` fills frame 100 with a :class:`CaptureEngine` standing in
   for the network: it records exactly the arrays the network would get (target, sources,
   flows, errors, fused fill) and returns the fused fill unchanged.

The captured arrays are the example (:func:`fused_arrays`); the ground truth is the clean
target. Everything depends on (seed, index) only, as the other training streams do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import cv2
import numpy as np

from ..filler import SOURCE_OFFSETS, ShotFiller
from ..model import context
from ..roi import ROI
from ..settings import Settings
from .data import ExampleStream, example_seed
from .sources import PictureBank
from .synth import SynthSettings, _occluder, make_example

__all__ = ["CaptureEngine", "fused_example", "fused_arrays", "FusedStream", "TARGET_FRAME"]

TARGET_FRAME = 100     # the target's frame number in the tiny shot (its references around it)


class CaptureEngine:
    """An engine that records what the network would be given and returns the fused fill.

    It is a fused_base engine (so :class:`ShotFiller` composes Telea's fill where no source
    shows the hole, as it does in front of such a model); ``calls`` holds one dict per
    ``fill``: ``target`` (4, H, W), ``srcs`` [(4, H, W)], ``flows`` (T, 2, H, W),
    ``flow_errs`` (T, 1, H, W), ``base`` (3, H, W).
    """

    name, device, stride = "capture", "cpu", 8
    context_base = fused_base = True
    model_info = {"preset": "capture", "origin": "training data", "hash": None, "runs_on": "none"}

    def __init__(self):
        self.calls: List[Dict[str, np.ndarray]] = []

    def encode_keyframe(self, frame: np.ndarray) -> np.ndarray:
        return np.array(frame, dtype=np.float32, copy=True)

    def fill(self, target, keys, flows, flow_errs, base=None):
        if base is None:
            raise RuntimeError("the capture engine stands in for a fused_base model: fill needs the fused base")
        self.calls.append(dict(target=np.array(target, np.float32), srcs=list(keys),
                               flows=np.array(flows, np.float32), flow_errs=np.array(flow_errs, np.float32),
                               base=np.array(base, np.float32)))
        return base


@dataclass(frozen=True)
class FusedSettings:
    """How the examples are degraded and run (probabilities per example)."""

    keyed_prob: float = 0.35        # clean keyframes among the references (else keyless)
    moving_mask_prob: float = 0.6   # the references carry the target's hole, moved (a moving occluder)
    static_mask_prob: float = 0.15  # ... or at the same place (a rig fixed to the screen)
    wire_prob: float = 0.2          # the hole is a thin curved wire across the crop
    deform_prob: float = 0.3        # a reference deforms non-rigidly
    blur_prob: float = 0.15         # a reference is motion blurred
    grain_prob: float = 0.3         # every frame gets its own grain
    jpeg_prob: float = 0.3          # every frame is JPEG-compressed


def _smooth_field(rng, size: int, amplitude: float) -> np.ndarray:
    """A smooth random displacement field (size, size, 2), pixels (a non-rigid motion)."""
    coarse = rng.normal(0.0, 1.0, (4, 4, 2)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return field * (amplitude / max(float(np.abs(field).max()), 1e-6))


def _remap(image, field):
    h, w = image.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + field[:, :, 0], gy + field[:, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _wire_mask(size: int, rng) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    p0 = rng.uniform(0, size, 2) * np.array([1.0, 0.0]) + np.array([0.0, -2.0])
    p2 = rng.uniform(0, size, 2) * np.array([1.0, 0.0]) + np.array([0.0, size + 2.0])
    if rng.random() < 0.5:   # across rather than down
        p0, p2 = p0[::-1], p2[::-1]
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.15 * size, 2)
    t = np.linspace(0, 1, 100)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2).round().astype(np.int32)
    cv2.polylines(mask, [pts], False, 1, thickness=int(rng.integers(3, 9)))
    return mask.astype(np.float32)


def _degrade(ex: Dict[str, np.ndarray], rng, f: FusedSettings) -> Dict[str, np.ndarray]:
    """``make_example``'s arrays made to look like a shot (see the module docstring)."""
    size = ex["mask"].shape[0]
    target, refs = ex["target"], list(ex["refs"])
    mask = _wire_mask(size, rng) if rng.random() < f.wire_prob else ex["mask"]
    ref_masks = list(ex["ref_masks"])
    u = rng.random()
    if u < f.moving_mask_prob:
        velocity = rng.normal(0, 0.08 * size, 2)
        for i in range(len(refs)):
            step = SOURCE_OFFSETS[i]
            m = np.float32([[1, 0, velocity[0] * step], [0, 1, velocity[1] * step]])
            ref_masks[i] = (cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_NEAREST) > 0).astype(np.float32)
    elif u < f.moving_mask_prob + f.static_mask_prob:
        ref_masks = [mask.copy() for _ in refs]
    for i in range(len(refs)):
        if rng.random() < f.deform_prob:
            refs[i] = _remap(refs[i], _smooth_field(rng, size, rng.uniform(1.0, 0.06 * size)))
        if rng.random() < f.blur_prob:
            length = int(rng.integers(3, 9))
            kernel = np.zeros((length, length), np.float32)
            kernel[length // 2, :] = 1.0 / length
            rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
            kernel = cv2.warpAffine(kernel, rot, (length, length))
            refs[i] = cv2.filter2D(refs[i], -1, kernel / max(kernel.sum(), 1e-6))
    frames = [target] + refs
    if rng.random() < f.grain_prob:
        sigma = rng.uniform(0.005, 0.03)
        frames = [np.clip(x + rng.normal(0, sigma, x.shape).astype(np.float32), 0, 1) for x in frames]
    if rng.random() < f.jpeg_prob:
        quality = int(rng.integers(35, 90))
        frames = [_jpeg(x, quality) for x in frames]
    frames = [np.round(np.clip(x, 0, 1) * 255).astype(np.float32) / 255 for x in frames]
    target, refs = frames[0], frames[1:]
    plate = np.where(mask[:, :, None] > 0, _occluder(target.shape, rng), target)
    ref_plates = [np.where(m[:, :, None] > 0, _occluder(r.shape, rng), r) for r, m in zip(refs, ref_masks)]
    return dict(target=target, mask=mask, plate=plate.astype(np.float32), refs=refs, ref_masks=ref_masks,
                ref_plates=[p.astype(np.float32) for p in ref_plates])


def _jpeg(image, quality):
    ok, buf = cv2.imencode(".jpg", np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255 if ok else image


def fused_example(bank: PictureBank, rng, size: int, n_refs: int, synth: SynthSettings = SynthSettings(),
                  f: FusedSettings = FusedSettings(), settings: Optional[Settings] = None) -> Dict[str, np.ndarray]:
    """One example's degraded frames run through the pipeline; returns the captured call plus
    ``truth`` (3, H, W) and ``keyed`` (whether keyframes served)."""
    ex = _degrade(make_example(bank, rng, size, n_refs, synth), rng, f)
    numbers = [TARGET_FRAME + SOURCE_OFFSETS[i] for i in range(len(ex["refs"]))]
    keyed = rng.random() < f.keyed_prob
    keys = numbers[:min(2, len(numbers))] if keyed else []
    clean = dict(zip(numbers, ex["refs"]))
    plates = dict(zip(numbers, zip(ex["ref_plates"], ex["ref_masks"])))
    engine = CaptureEngine()
    settings = settings or Settings(temporal=False, detail=False)
    filler = ShotFiller(engine, ROI(0, 0, size, size, size, size), settings, False,
                        key_loader=lambda k: clean[k], source_loader=lambda k: plates[k])
    filler.fill(ex["plate"], ex["mask"], keys, [n for n in numbers if n not in keys], frame=TARGET_FRAME)
    if not engine.calls:   # the mask vanished at working size (cannot happen at ROI = crop)
        raise RuntimeError("the pipeline did not call the network")
    call = engine.calls[-1]
    call.update(truth=np.ascontiguousarray(ex["target"].transpose(2, 0, 1)), keyed=keyed)
    return call


def fused_arrays(call: Dict[str, np.ndarray], n_srcs: int) -> Dict[str, np.ndarray]:
    """A captured call -> the network's tensors, as :func:`keyprop.core.training.data.network_arrays`
    names them (the input's hole holds the fused fill). Sources are prefilled as the engines prefill
    them and padded to ``n_srcs`` by repeating the first (a batch needs one count)."""
    srcs = [context.prefill(s) for s in call["srcs"]][:n_srcs]
    flows, errs = list(call["flows"][:n_srcs]), list(call["flow_errs"][:n_srcs])
    while len(srcs) < n_srcs:
        srcs.append(srcs[0])
        flows.append(flows[0])
        errs.append(errs[0])
    target = call["target"]
    return dict(input=context.with_base(target, call["base"]), srcs=np.stack(srcs), flows=np.stack(flows),
                flow_errs=np.stack(errs), target=call["truth"].astype(np.float32),
                mask=(target[3:4] > 0.5).astype(np.float32))


@dataclass
class FusedStream(ExampleStream):
    """Batches of captured examples for step ``step`` (deterministic), like ExampleStream."""

    fused: FusedSettings = FusedSettings()
    prefill: bool = True           # a fused_base model is a context_base model

    def example(self, index: int) -> Dict[str, np.ndarray]:
        call = fused_example(self.bank, example_seed(self.seed, index), self.size, self.n_refs, self.settings,
                             self.fused)
        return fused_arrays(call, self.n_refs)
