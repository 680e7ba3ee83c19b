"""``keyprop export``: write the ONNX graphs of a model (keyframe encoder + target filler) per frame size.

    keyprop export --model shot.pt --out onnx/ --size 960x544 --size 1920x1080
    keyprop export --preset small --out onnx/ --fp16

The folder (graphs, ``manifest.json``) can be given to the onnx engine as ``--model``.
"""
from __future__ import annotations

import logging
import sys


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 960x544") from None
    return h, w


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the model to ONNX (DeformConv, opset 19), per frame size")
    p.add_argument("--model", default=None, help="keyprop .pt model file (default: the shipped model)")
    p.add_argument("--preset", default=None,
                   help="preset name: random weights without --model, or the preset --model must be")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", action="append", default=None, metavar="WxH",
                   help="frame size to export, multiples of 8 (repeatable; default 960x544)")
    p.add_argument("--fp16", action="store_true", help="compute in float16 (for CUDA); inputs stay float32")
    p.add_argument("--decompose-deform", action="store_true",
                   help="GridSample ops instead of DeformConv, for runtimes without DeformConv")
    p.add_argument("--fft", choices=("dft", "matmul"), default="dft",
                   help="FFC Fourier units as ONNX DFT (default) or as constant-matrix MatMuls "
                        "(much faster on onnxruntime's CPU provider)")


def run(args) -> int:
    from .engine import check_export_packages

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        check_export_packages()  # without the onnx extra: one line, not an import traceback
        from .exporter import ExportOptions, export_model

        sizes = [_size(s) for s in (args.size or ["960x544"])]
        model = _load(args.model, args.preset)
        for size in sizes:
            model.check_size(*size)
        options = ExportOptions(fp16=args.fp16, decompose_deform=args.decompose_deform, fft=args.fft)
        for size in sizes:
            paths = export_model(model, size, args.out, options)
            for path in paths.values():
                print(path)
    except (ValueError, FileNotFoundError) as exc:
        print(f"keyprop export: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def _load(model_path, preset):
    from ..core.model import create_model
    from ..core.runtime import file_hash, load_model, resolve_model

    if preset and model_path:
        model = create_model(preset, checkpoint=resolve_model(model_path))
        model.model_hash = file_hash(resolve_model(model_path))
        return model
    if preset:
        return load_model(f"preset:{preset}")
    return load_model(model_path)
