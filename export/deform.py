"""How ``keyprop::deform_conv2d`` leaves torch: one ONNX ``DeformConv`` node, or plain GridSample ops.

Default: a translation registered for the exporter
(``torch.onnx.export(..., custom_translation_table=DEFORM_CONV_TRANSLATION)``) writes each
call of the op as a single standard ``DeformConv`` (opset 19). The conventions are the
same on both sides (see :mod:`keyprop.core.ops.deform_conv`): offsets are (dy, dx) per
kernel point in input pixels, the input's channels split into ``offset_group`` blocks,
modulation per kernel point; so the node takes the op's tensors as they are.

``--decompose-deform``: for runtimes without ``DeformConv`` the op is instead decomposed
(before translation) into :func:`~keyprop.core.ops.deform_conv2d_reference`, the pure
PyTorch definition, which exports to ``GridSample`` + ``MatMul``. Same numbers, slower.
"""
from __future__ import annotations

import torch
from onnxscript import opset19 as op

from ..core.ops import deform_conv2d_reference

DEFORM_OPSET = 19


def deform_conv2d_to_onnx(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    """onnxscript translation of ``keyprop::deform_conv2d`` -> ``DeformConv``.

    Input order differs (ONNX: X, W, offset, B, mask); ``pads`` is [top, left, bottom, right].
    """
    return op.DeformConv(input, weight, offset, bias, mask,
                         strides=[int(s) for s in stride],
                         pads=[int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
                         dilations=[int(d) for d in dilation],
                         group=int(groups), offset_group=int(offset_groups))


def custom_translation_table():
    """The exporter's table entry for our op (the op is registered when core.ops is imported)."""
    return {torch.ops.keyprop.deform_conv2d.default: deform_conv2d_to_onnx}


def _deform_conv2d_decomposed(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                              offset_groups):
    return deform_conv2d_reference(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                   offset_groups)


def decomposition_table():
    """For ``ExportedProgram.run_decompositions``: the op as GridSample-based aten ops."""
    return {torch.ops.keyprop.deform_conv2d.default: _deform_conv2d_decomposed}
