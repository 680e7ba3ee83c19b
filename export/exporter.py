"""torch -> ONNX: the keyframe encoder and target filler graphs of one model at one frame size.

One export writes two files (see :mod:`keyprop.export.graphs`)::

    keyframe_encoder_{W}x{H}.onnx   frame -> cached tensors of one keyframe
    target_filler_{W}x{H}.onnx      target, flows, flow_errs, cached tensors of T keyframes -> fill

**T is dynamic, H and W are not.** The latent grid reads and writes the bottleneck map
resized to the nearest multiple of the grid (``round(h / 16)``, ties to even) only when it
is not one already, and the position features are computed for the exact map size: both
are decided in Python from H and W, so the exporter bakes them in. A graph is therefore
exported per frame size, on demand, into a cache keyed by model hash, variant and size
(:func:`default_cache_root`). The exporter's strict-mode fallback, which would silently
bake such decisions into a graph declared dynamic, is never used.

Opset 19 (``DeformConv``), IR version 10 (onnxruntime >= 1.16 reads it). Every file holds
``metadata_props``: keyprop version, model hash, graph kind, size, precision and the names
of the cached tensors, checked when a file is loaded.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .. import __version__
from ..core.atomic import atomic_write
from ..core.model import KeyPropNet, prepare_for_inference
from .fourier import use_matmul_fft
from .graphs import KeyframeEncoderGraph, TargetFillerGraph, cache_names, keyframe_axis

log = logging.getLogger(__name__)

OPSET = 19
IR_VERSION = 10  # opset 19 needs >= 9; onnxruntime-gpu 1.31 reads <= 13
ENCODER, FILLER = "keyframe_encoder", "target_filler"
MAX_KEYFRAMES = 64


@dataclass(frozen=True)
class ExportOptions:
    fp16: bool = False              # compute in float16 (for CUDA); graph inputs/outputs stay float32
    decompose_deform: bool = False  # GridSample ops instead of DeformConv (runtimes without it)
    fft: str = "dft"                # 'dft': ONNX DFT nodes; 'matmul': constant DFT matrices (fast on ORT CPU)

    def __post_init__(self):
        if self.fft not in ("dft", "matmul"):
            raise ValueError(f"fft must be 'dft' or 'matmul', got {self.fft!r}")

    @property
    def variant(self) -> str:
        return (("fp16" if self.fp16 else "fp32") + ("-gridsample" if self.decompose_deform else "")
                + ("-matmulfft" if self.fft == "matmul" else ""))


def model_hash(model: KeyPropNet) -> str:
    """The model file's hash when it came from a file, else a hash of config and weights."""
    known = getattr(model, "model_hash", None)
    if known:
        return known
    digest = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def default_cache_root() -> Path:
    """``$KEYPROP_ONNX_CACHE``, else ``$XDG_CACHE_HOME/keyprop/onnx``, else ``~/.cache/keyprop/onnx``."""
    if os.environ.get("KEYPROP_ONNX_CACHE"):
        return Path(os.environ["KEYPROP_ONNX_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "keyprop" / "onnx"


def file_names(size: Tuple[int, int]) -> Dict[str, str]:
    h, w = size
    return {ENCODER: f"{ENCODER}_{w}x{h}.onnx", FILLER: f"{FILLER}_{w}x{h}.onnx"}


def _example_cache(model: KeyPropNet, size, t: int):
    cfg = model.cfg
    h, w = size[0] // cfg.stride, size[1] // cfg.stride
    heads, n, d = cfg.num_heads, cfg.num_latents_sqrt ** 2, cfg.latent_dim // cfg.num_heads
    shapes = {"lif": (1, t, cfg.bottleneck_channels, h, w), "keys": (1, heads, t * n, d),
              "values": (1, heads, t * n, d), "frames": (1, t, 4, size[0], size[1])}
    return [torch.zeros(shapes[name.rstrip("0123456789")]) for name in cache_names(model)]


def _graph_module(model: KeyPropNet, kind: str, size, options: ExportOptions):
    # A fresh inference copy per graph: tracing fills Python-side caches (position features)
    # with tracer tensors, which must not leak into a model that runs eagerly later.
    fast = prepare_for_inference(model, channels_last=False)
    dtype = torch.float16 if options.fp16 else torch.float32
    fast = fast.to(dtype)
    if options.fft == "matmul":
        use_matmul_fft(fast, size)
    h, w = size
    if kind == ENCODER:
        return KeyframeEncoderGraph(fast, dtype), (torch.rand(1, 4, h, w),), None, ["frame"], cache_names(model)
    t = torch.export.Dim("T", min=1, max=MAX_KEYFRAMES)
    n = model.cfg.num_latents_sqrt ** 2
    names = cache_names(model)
    args = (torch.rand(1, 4, h, w), torch.randn(1, 2, 2, h, w), torch.rand(1, 2, 1, h, w), _example_cache(model, size, 2))
    dynamic = {"target": None, "flows": {1: t}, "flow_errs": {1: t},
               "cached": [{1: t} if keyframe_axis(name) == 1 else {2: n * t} for name in names]}
    return TargetFillerGraph(fast, dtype), args, dynamic, ["target", "flows", "flow_errs", *names], ["fill"]


def export_graph(model: KeyPropNet, kind: str, size: Tuple[int, int], path, options: ExportOptions = ExportOptions(),
                 key: Optional[str] = None) -> Path:
    """Export graph ``kind`` (ENCODER or FILLER) of ``model`` at ``size`` = (H, W) to ``path`` (atomically)."""
    import onnx

    from .deform import custom_translation_table, decomposition_table

    model.check_size(*size)
    if model.n_keyframe_blocks == 0:
        raise ValueError("this model does not use its keyframes (no cross attention, no warp): nothing to export")
    module, args, dynamic, input_names, output_names = _graph_module(model, kind, size, options)
    with torch.no_grad():
        # strict=False and no fallback: a failure here must not turn into a silently specialised graph.
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        if options.decompose_deform:
            program = program.run_decompositions(decomposition_table())
        onnx_program = torch.onnx.export(program, opset_version=OPSET, dynamo=True, verbose=False,
                                         custom_translation_table=custom_translation_table(),
                                         input_names=input_names, output_names=output_names)
    proto = onnx_program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    if kind == FILLER:
        _name_keyframe_dim(proto)
    meta = {
        "keyprop_version": __version__,
        "model_hash": key or model_hash(model),
        "preset": str(getattr(model, "preset", "custom")),
        "graph": kind,
        "height": str(size[0]),
        "width": str(size[1]),
        "precision": "fp16" if options.fp16 else "fp32",
        "deform": "GridSample" if options.decompose_deform else "DeformConv",
        "fft": "MatMul" if options.fft == "matmul" else "DFT",
        "cache_names": ",".join(cache_names(model)),
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    path = atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))
    log.info("exported %s", path)
    return path


def _name_keyframe_dim(proto) -> None:
    """Call the exporter's symbol for the keyframe count (``s15``, ...) ``T`` in the graph's shapes."""
    import re

    flows = next(i for i in proto.graph.input if i.name == "flows")
    symbol = flows.type.tensor_type.shape.dim[1].dim_param
    if not symbol:
        return
    pattern = re.compile(rf"\b{re.escape(symbol)}\b")
    for info in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = pattern.sub("T", dim.dim_param)


def export_model(model: KeyPropNet, size: Tuple[int, int], out_dir, options: ExportOptions = ExportOptions(),
                 key: Optional[str] = None) -> Dict[str, Path]:
    """Both graphs of ``model`` at ``size`` = (H, W) into ``out_dir``, plus ``manifest.json``."""
    out_dir = Path(out_dir)
    key = key or model_hash(model)
    paths = {kind: export_graph(model, kind, size, out_dir / name, options, key)
             for kind, name in file_names(size).items()}
    write_manifest(out_dir, model, key, options)
    return paths


def write_manifest(out_dir: Path, model: KeyPropNet, key: str, options: ExportOptions) -> None:
    manifest_path = out_dir / "manifest.json"
    sizes = sorted({p.stem.rsplit("_", 1)[1] for p in out_dir.glob(f"{FILLER}_*.onnx")})
    manifest = {"format": "keyprop-onnx", "keyprop_version": __version__, "model_hash": key,
                "preset": str(getattr(model, "preset", "custom")), "variant": options.variant,
                "opset": OPSET, "stride": model.cfg.stride, "context_base": model.cfg.context_base,
                "fused_base": model.cfg.fused_base,
                "sizes_wxh": sizes, "cache_names": cache_names(model)}
    with io.open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
