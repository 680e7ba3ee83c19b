"""ONNX Runtime engine: the interface of ``core.runtime.TorchEngine`` on exported graphs.

``OnnxEngine(model)`` takes what ``--model`` takes (None/'default', a keyprop ``.pt`` file,
'preset:NAME' for random weights), a KeyPropNet, or a folder written by ``keyprop export``.
Graphs are exported on demand, per frame size, into the cache
(``~/.cache/keyprop/onnx/<model hash>/<variant>/``, see :mod:`keyprop.export.exporter`);
the first frame of a new size pays the export (seconds for small models, about a minute
for the paper preset on 2 CPU cores). A folder from ``keyprop export`` is used as it is:
only the sizes exported into it run.

Providers: CUDA when it really runs here (see :func:`cuda_status`), else CPU. Every file's metadata (keyprop version, model hash, graph kind,
size) is checked when loaded: a stale cache entry is re-exported, a mismatching file in a
folder given by the user is a ValueError.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import __version__

log = logging.getLogger(__name__)


@dataclass
class OnnxKeyHandle:
    """One encoded keyframe: its cached tensors (T = 1), in the graphs' order."""

    size: Tuple[int, int]
    tensors: List[np.ndarray]


INSTALL_HINT = "run `python3 install.py --onnx` (or --gpu)"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"the onnx backend needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def check_export_packages() -> None:
    """ValueError (one line) when onnx or onnxscript, which every export needs, is missing."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"ONNX export needs {' and '.join(missing)}, not installed here: {INSTALL_HINT}")


def _nvidia_driver() -> bool:
    """Whether the CUDA driver library loads: without it CUDA cannot run, and nothing needs probing."""
    import ctypes

    for name in (("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cuda_status(ort) -> Tuple[bool, str]:
    """(usable, why not) for onnxruntime's CUDA provider, found without a line on the terminal.

    onnxruntime-gpu lists CUDA among the available providers even on a machine without a
    GPU, and a session asking for it prints a red error (the CUDA libraries do not load)
    before falling back to CPU. So: the provider must be listed, an NVIDIA driver must load,
    and then a tiny session must really run on CUDA, with onnxruntime's own log silenced for
    that probe.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime has no CUDA provider"
    if not _nvidia_driver():
        return False, "no NVIDIA driver"
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # The provider library's load failure goes to the default logger, not the session's.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 (any failure means: no usable CUDA)
        return False, "onnxruntime's CUDA provider did not start (CUDA or cuDNN libraries missing?)"
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return False, "onnxruntime's CUDA provider did not start (CUDA or cuDNN libraries missing?)"
    return True, ""


class OnnxEngine:
    """Runs exported keyframe-encoder / target-filler graphs with onnxruntime."""

    name = "onnx"

    def __init__(self, model: Union[None, str, os.PathLike, Any] = None, device: str = "auto",
                 threads: Optional[int] = None, precision: str = "fp32", decompose_deform: bool = False,
                 fft: Optional[str] = None, cache_dir: Optional[Union[str, os.PathLike]] = None):
        from .exporter import ExportOptions, default_cache_root, model_hash

        self._ort = ort = _ort()
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"unknown precision {precision!r} (expected fp32 or fp16)")
        cuda, why_not = cuda_status(ort) if device != "cpu" else (False, "")
        if device == "cuda" and not cuda:
            raise ValueError(f"--device cuda: onnxruntime cannot run on CUDA here ({why_not})")
        self.device = "cuda" if cuda else "cpu"
        # Said once to the user (the run's summary line): which provider runs, and why not CUDA.
        self.runs_on = f"onnxruntime {self.device.upper()}" + (f" ({why_not})" if why_not else "")
        log.info("onnx backend: %s", self.runs_on)
        self.threads = int(threads) if threads else None
        # onnxruntime's CPU DFT kernel is O(n^2) and single-threaded for the bottleneck's
        # lengths (not powers of two): on CPU the Fourier units go out as MatMuls (export/fourier.py).
        fft = fft or ("dft" if self.device == "cuda" else "matmul")
        self.options = ExportOptions(fp16=precision == "fp16", decompose_deform=decompose_deform, fft=fft)
        self._sessions: Dict[Tuple[str, Tuple[int, int]], Any] = {}
        self._model = None
        if isinstance(model, (str, os.PathLike)) and Path(model).expanduser().is_dir():
            self._init_from_folder(Path(model).expanduser())
        else:
            check_export_packages()  # graphs are exported on demand, per frame size
            self._model = self._load_torch_model(model)
            self.model_hash = model_hash(self._model)
            self.folder = Path(cache_dir or default_cache_root()) / self.model_hash / self.options.variant
            self.user_folder = False
            cfg, preset = self._model.cfg, getattr(self._model, "preset", "custom")
            provenance = getattr(self._model, "provenance", None)
            self.model_info = {"preset": preset, "origin": getattr(provenance, "origin", "unknown"),
                               "hash": self.model_hash, "path": getattr(self._model, "model_path", None)}
            self.stride = cfg.stride
            self.context_base = cfg.context_base
            self.fused_base = cfg.fused_base
            from .graphs import cache_names

            self.cache_names = cache_names(self._model)
        self.model_info["onnx"] = str(self.folder)
        self.model_info["runs_on"] = self.runs_on
        from ..core.model.context import NetworkFrames

        self._network_frame = NetworkFrames(self.context_base)

    # --- model sources ----------------------------------------------------------------------
    @staticmethod
    def _load_torch_model(model):
        from ..core.model import KeyPropNet
        from ..core.runtime import load_model

        if isinstance(model, KeyPropNet):
            return model
        spec = None if model is None else str(model)
        try:
            return load_model(spec)
        except FileNotFoundError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None

    def _init_from_folder(self, folder: Path) -> None:
        manifest_path = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"{folder}: not a keyprop ONNX export (no readable manifest.json)") from None
        if manifest.get("format") != "keyprop-onnx":
            raise ValueError(f"{manifest_path}: not a keyprop ONNX manifest")
        if manifest.get("keyprop_version") != __version__:
            raise ValueError(f"{folder}: exported by keyprop {manifest.get('keyprop_version')}, this is keyprop "
                             f"{__version__}; export it again with `keyprop export`")
        self.folder, self.user_folder = folder, True
        self.model_hash = manifest["model_hash"]
        variant = manifest["variant"]
        self.options = type(self.options)(fp16=variant.startswith("fp16"), decompose_deform="gridsample" in variant,
                                          fft="matmul" if "matmulfft" in variant else "dft")
        self.cache_names = list(manifest["cache_names"])
        self.stride = int(manifest.get("stride", 8))
        self.context_base = bool(manifest.get("context_base", False))
        self.fused_base = bool(manifest.get("fused_base", False))
        self.model_info = {"preset": manifest.get("preset", "custom"), "origin": "onnx-export",
                           "hash": self.model_hash, "path": str(folder)}

    # --- sessions -----------------------------------------------------------------------------
    def _session_options(self):
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle ORT threads would otherwise spin after each run, taking the cores from the
        # pipeline's own work (flow, I/O) and from torch in the same process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _open(self, path: Path, kind: str, size: Tuple[int, int]):
        """A session on ``path``, or ValueError (one line) saying why the file cannot serve."""
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda"
                     else ["CPUExecutionProvider"])
        if not path.is_file():
            raise ValueError(f"{path}: ONNX file not found")
        try:
            session = self._ort.InferenceSession(str(path), self._session_options(), providers=providers)
        except Exception as exc:  # noqa: BLE001 (onnxruntime raises its own exception types)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a loadable ONNX file ({first[:200]})") from None
        meta = session.get_modelmeta().custom_metadata_map
        want = {"keyprop_version": __version__, "model_hash": self.model_hash, "graph": kind,
                "height": str(size[0]), "width": str(size[1])}
        for key, value in want.items():
            if meta.get(key) != value:
                raise ValueError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r} "
                                 f"(an export from another keyprop version or model)")
        return session

    def _session(self, kind: str, size: Tuple[int, int]):
        from .exporter import export_model, file_names

        key = (kind, size)
        if key in self._sessions:
            return self._sessions[key]
        path = self.folder / file_names(size)[kind]
        if self.user_folder:
            session = self._open(path, kind, size)
        else:
            try:
                session = self._open(path, kind, size)
            except ValueError as exc:
                if path.exists():
                    log.info("re-exporting: %s", exc)
                else:
                    log.info("exporting %s graphs at %dx%d into %s", self.model_info["preset"], size[1], size[0],
                             self.folder)
                export_model(self._model, size, self.folder, self.options, key=self.model_hash)
                session = self._open(path, kind, size)
        self._sessions[key] = session
        return session

    # --- the engine interface -----------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray, what: str) -> Tuple[int, int]:
        if frame.ndim != 3 or frame.shape[0] != 4:
            raise ValueError(f"{what} must be (4, H, W), got shape {frame.shape}")
        h, w = frame.shape[1:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"{what}: height and width must be multiples of {self.stride}, got {h}x{w}")
        return int(h), int(w)

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        """A (4, H, W) frame as the network takes it (hole prefilled for context_base models)."""
        return self._network_frame(frame)

    def encode_keyframe(self, frame: np.ndarray) -> OnnxKeyHandle:
        from .exporter import ENCODER

        size = self._check_frame(frame, "keyframe")
        session = self._session(ENCODER, size)
        outputs = session.run(None, {"frame": self._frame(frame)[None]})
        return OnnxKeyHandle(size, outputs)

    def fill(self, target: np.ndarray, keys: Sequence[OnnxKeyHandle], flows: np.ndarray,
             flow_errs: np.ndarray, base: Optional[np.ndarray] = None) -> np.ndarray:
        from .exporter import FILLER
        from .graphs import join_caches

        if not keys:
            raise ValueError("fill needs at least one keyframe")
        size = self._check_frame(target, "target")
        if any(k.size != size for k in keys):
            raise ValueError(f"target is {size[0]}x{size[1]} but keyframes were encoded at "
                             f"{sorted({k.size for k in keys})}")
        t = len(keys)
        if flows.shape != (t, 2) + size or flow_errs.shape != (t, 1) + size:
            raise ValueError(f"flows must be {(t, 2) + size} and flow_errs {(t, 1) + size} for {t} keyframes, got "
                             f"{flows.shape} and {flow_errs.shape}")
        session = self._session(FILLER, size)
        from ..core.model.context import with_base

        frame = self._frame(target) if base is None else with_base(target, base)
        feeds = {"target": frame[None],
                 "flows": np.ascontiguousarray(flows, dtype=np.float32)[None],
                 "flow_errs": np.ascontiguousarray(flow_errs, dtype=np.float32)[None]}
        feeds.update(zip(self.cache_names, join_caches(self.cache_names, [k.tensors for k in keys])))
        return session.run(None, feeds)[0][0]
