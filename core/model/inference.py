"""Inference-only rewrites of a trained KeyPropNet: same function, less work on CPU.

``prepare_for_inference(model)`` returns a copy with every eval-mode BatchNorm folded into
the linear layer beside it and the weights in channels_last layout (oneDNN's native
layout: no reorders around each convolution). Outputs match the original within float
rounding (tested to 1e-4 on the paper preset). The copy's state dict differs from the
checkpoint's (no BatchNorm entries): never save it; keep the original for training and
export.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .gif import LatentWrite
from .lif import FFCNormAct, FourierUnit, SpectralTransform
from .network import ConvNormAct, KeyPropNet, UpNormAct


def _bn_affine(bn: nn.BatchNorm2d):
    """Eval-mode BatchNorm as y = scale * x + shift, per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _scale_output(layer: nn.Module, scale: torch.Tensor, shift=None) -> None:
    """Make ``layer`` (Conv2d or ConvTranspose2d) compute scale * layer(x) + shift."""
    out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
    shape = [1] * layer.weight.dim()
    shape[out_dim] = -1
    layer.weight.data.mul_(scale.reshape(shape))
    bias = layer.bias.data * scale if layer.bias is not None else torch.zeros_like(scale)
    if shift is not None:
        bias = bias + shift
    layer.bias = nn.Parameter(bias)


def _fold_into_next(bn: nn.BatchNorm2d, layer: nn.Conv2d) -> None:
    """Make 1x1 ``layer`` compute layer(bn(x)) from x alone."""
    scale, shift = _bn_affine(bn)
    w = layer.weight.data  # (out, in, 1, 1)
    bias = layer.bias.data if layer.bias is not None else torch.zeros(w.shape[0])
    layer.bias = nn.Parameter(bias + (w[:, :, 0, 0] @ shift))
    layer.weight.data.mul_(scale.reshape(1, -1, 1, 1))


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of a KeyPropNet into its neighbour, in place; returns the model."""
    for m in model.modules():
        if isinstance(m, (ConvNormAct, UpNormAct)):
            _scale_output(m.conv if isinstance(m, ConvNormAct) else m.deconv, *_bn_affine(m.norm))
            m.norm = nn.Identity()
        elif isinstance(m, FFCNormAct):
            # out_l = bn_l(l2l(x_l) + g2l(x_g)); out_g = bn_g(l2g(x_l) + g2g(x_g)), g2g ending in conv2.
            scale_l, shift_l = _bn_affine(m.bn_l)
            scale_g, shift_g = _bn_affine(m.bn_g)
            _scale_output(m.ffc.convl2l, scale_l, shift_l)
            _scale_output(m.ffc.convg2l, scale_l)
            _scale_output(m.ffc.convl2g, scale_g, shift_g)
            _scale_output(m.ffc.convg2g.conv2, scale_g)
            m.bn_l, m.bn_g = nn.Identity(), nn.Identity()
        elif isinstance(m, SpectralTransform):
            _scale_output(m.conv1[0], *_bn_affine(m.conv1[1]))
            m.conv1[1] = nn.Identity()
        elif isinstance(m, FourierUnit):
            _scale_output(m.conv_layer, *_bn_affine(m.bn))
            m.bn = nn.Identity()
        elif isinstance(m, LatentWrite):
            _fold_into_next(m.ln1, m.projection)
            _fold_into_next(m.ln2, m.mlp.dense1)
            m.ln1, m.ln2 = nn.Identity(), nn.Identity()
    return model


def prepare_for_inference(model: KeyPropNet, channels_last: bool = True, fold_bn: bool = True) -> KeyPropNet:
    """An eval-mode copy of ``model`` rewritten for fast inference (see module docstring)."""
    fast = copy.deepcopy(model).eval()
    for attr in ("preset", "provenance"):
        if hasattr(model, attr):
            setattr(fast, attr, getattr(model, attr))
    if fold_bn:
        fold_batchnorm(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        fast.channels_last = True
    fast.inference_only = True
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast
