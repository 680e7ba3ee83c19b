"""Modulated deformable convolution: the one op through which all cross-frame sampling goes.

Conventions (identical to ONNX ``DeformConv``, opset 19, and torchvision's
``deform_conv2d``, so the export maps one node to one node):

- ``input``  (N, C_in, H, W).
- ``weight`` (C_out, C_in / groups, kH, kW); ``bias`` (C_out,) or None.
- ``offset`` (N, 2 * offset_groups * kH * kW, H_out, W_out). For offset group ``g`` and
  kernel point ``k = i * kW + j`` the channels ``2 * (g * kH * kW + k)`` and ``... + 1``
  hold ``(dy, dx)``: **y first**, in **pixels** of ``input``.
- ``mask``   (N, offset_groups * kH * kW, H_out, W_out) modulation scalars, or None (= 1).
- The input's channels are split into ``offset_groups`` contiguous blocks; block ``g``
  is sampled with offset group ``g``.
- Kernel point ``(i, j)`` of output pixel ``(oy, ox)`` samples the input at
  ``y = oy * stride_h - pad_h + i * dilation_h + dy`` and
  ``x = ox * stride_w - pad_w + j * dilation_w + dx`` (pixel centres at integers),
  bilinearly; each of the four neighbours that falls outside the image counts as zero.

A 1x1 kernel with ``weight = 1`` per channel (groups = C) and the optical flow as offset is
an exact bilinear backward warp: ``out(y, x) = input(y + flow_y, x + flow_x)``. See
:func:`flow_warp`.

The op is registered with ``torch.library`` as ``keyprop::deform_conv2d`` so that it stays
one opaque node in traced / exported graphs; its kernel and its backward are the pure
PyTorch function :func:`deform_conv2d_reference` (no compiled extension: torchvision
cannot be installed here). Under ``torch.inference_mode`` (the engines' fills) that function
is called directly: the same values, without the dispatcher's first-call import of
torch._dynamo.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["deform_conv2d", "deform_conv2d_reference", "flow_warp", "DeformConv2d"]

Pair = Tuple[int, int]


def _pair(value) -> Pair:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return value  # type: ignore[return-value]


def _check_shapes(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    """Raise ValueError with expected-vs-actual shapes. Pure shape arithmetic (trace-safe)."""
    if input.dim() != 4:
        raise ValueError(f"deform_conv2d: input must be (N, C, H, W), got shape {tuple(input.shape)}")
    n, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in % groups or c_out % groups or c_in // groups != c_per_group:
        raise ValueError(
            f"deform_conv2d: weight {tuple(weight.shape)} does not fit input channels {c_in} with groups={groups}")
    if c_in % offset_groups:
        raise ValueError(f"deform_conv2d: input channels {c_in} not divisible by offset_groups={offset_groups}")
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    expected = (n, 2 * offset_groups * kh * kw, h_out, w_out)
    if tuple(offset.shape) != expected:
        raise ValueError(f"deform_conv2d: offset must have shape {expected}, got {tuple(offset.shape)}")
    if mask is not None:
        expected_mask = (n, offset_groups * kh * kw, h_out, w_out)
        if tuple(mask.shape) != expected_mask:
            raise ValueError(f"deform_conv2d: mask must have shape {expected_mask}, got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"deform_conv2d: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    return h_out, w_out


def _sample_columns(input, offset, kh, kw, stride, padding, dilation, offset_groups, h_out, w_out):
    """Bilinear samples of every kernel point: (N, C_in, kH*kW, H_out, W_out).

    Uses ``grid_sample`` with ``align_corners=False`` and zero padding: its bilinear kernel
    treats each out-of-image neighbour as zero, exactly the DeformConv rule, and the
    align_corners=False normalisation stays valid for 1-pixel-wide inputs.
    """
    n, c_in, h, w = input.shape
    k = kh * kw
    dtype, device = offset.dtype, offset.device
    # Base sampling positions of each kernel point, (K, H_out, W_out).
    oy = torch.arange(h_out, dtype=dtype, device=device) * stride[0] - padding[0]
    ox = torch.arange(w_out, dtype=dtype, device=device) * stride[1] - padding[1]
    ky = torch.arange(kh, dtype=dtype, device=device).repeat_interleave(kw) * dilation[0]
    kx = torch.arange(kw, dtype=dtype, device=device).repeat(kh) * dilation[1]
    base_y = ky[:, None, None] + oy[None, :, None]  # (K, H_out, 1)
    base_x = kx[:, None, None] + ox[None, None, :]  # (K, 1, W_out)

    off = offset.reshape(n, offset_groups, k, 2, h_out, w_out)
    pos_y = base_y + off[:, :, :, 0]  # (N, G, K, H_out, W_out)
    pos_x = base_x + off[:, :, :, 1]
    # Pixel -> normalised coordinates for align_corners=False: g = (2p + 1) / size - 1.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.reshape(n * offset_groups, k * h_out, w_out, 2)  # (N*G, K*H_out, W_out, 2)

    x = input.reshape(n * offset_groups, c_in // offset_groups, h, w)
    cols = F.grid_sample(x.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return cols.reshape(n, c_in, k, h_out, w_out).to(input.dtype)


def deform_conv2d_reference(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
) -> torch.Tensor:
    """Modulated deformable convolution in plain PyTorch ops (differentiable by autograd).

    Shapes and conventions: see the module docstring. Returns (N, C_out, H_out, W_out).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    h_out, w_out = _check_shapes(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups)
    n, c_in = input.shape[:2]
    c_out, _, kh, kw = weight.shape
    k = kh * kw

    cols = _sample_columns(input, offset, kh, kw, stride, padding, dilation, offset_groups, h_out, w_out)
    if mask is not None:
        # (N, G*K, H_out, W_out) -> (N, G, 1, K, H_out, W_out), broadcast over each group's channels.
        m = mask.reshape(n, offset_groups, 1, k, h_out, w_out)
        cols = (cols.reshape(n, offset_groups, c_in // offset_groups, k, h_out, w_out) * m).reshape(
            n, c_in, k, h_out, w_out)

    if k == 1 and groups == c_in and c_out == c_in:
        # Depthwise 1x1 (the flow warp): a per-channel scale, no matmul needed.
        out = cols[:, :, 0] * weight.reshape(1, c_out, 1, 1)
    else:
        # (N, groups, C_in/groups * K, L) x (groups, C_out/groups, C_in/groups * K)
        cols = cols.reshape(n, groups, (c_in // groups) * k, h_out * w_out)
        wmat = weight.reshape(groups, c_out // groups, (c_in // groups) * k)
        out = torch.matmul(wmat.unsqueeze(0), cols).reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.reshape(1, c_out, 1, 1)
    return out


# --- the registered op -----------------------------------------------------------------

@torch.library.custom_op("keyprop::deform_conv2d", mutates_args=())
def _deform_conv2d_op(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
) -> torch.Tensor:
    return deform_conv2d_reference(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                   offset_groups)


@_deform_conv2d_op.register_fake
def _(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    n = input.shape[0]
    c_out, _, kh, kw = weight.shape
    h_out = (input.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (input.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return input.new_empty((n, c_out, h_out, w_out))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.params = inputs[5:]


def _backward(ctx, grad_out):
    # The backward is autograd through the same pure-PyTorch function: one definition of
    # the maths, so forward and gradient can never disagree.
    tensors = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        out = deform_conv2d_reference(*leaves, *ctx.params)
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[:5]) if need]
        grads = torch.autograd.grad(out, [leaves[i] for i in wanted], grad_out, allow_unused=True)
    result = [None] * 5
    for i, g in zip(wanted, grads):
        result[i] = g if g is not None else torch.zeros_like(tensors[i])
    return (*result, None, None, None, None, None)


_deform_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    offset_groups: int = 1,
) -> torch.Tensor:
    """Modulated deformable convolution through the registered op ``keyprop::deform_conv2d``.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * offset_groups * kH * kW, H_out, W_out), (dy, dx) pairs in pixels.
        weight: (C_out, C_in / groups, kH, kW).
        bias: (C_out,) or None.
        mask: (N, offset_groups * kH * kW, H_out, W_out) modulation, or None for 1.
        stride, padding, dilation: int or (h, w).
        groups: convolution groups; offset_groups: groups of input channels sharing offsets.

    Returns:
        (N, C_out, H_out, W_out).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _check_shapes(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups)
    c_out, _, kh, kw = weight.shape
    if mask is None:
        mask = offset.new_ones((offset.shape[0], offset_groups * kh * kw) + tuple(offset.shape[2:]))
    if bias is None:
        bias = weight.new_zeros((c_out,))
    if torch.is_inference_mode_enabled() and not torch.jit.is_tracing():
        # Inference (the engines run under torch.inference_mode): the op's own kernel, called
        # directly. The op's first call through the dispatcher imports torch._dynamo (1.5-2.6 s
        # of Python on one core: a keyless run's first network fill took 1.6-2.5 s, later ones
        # 0.1-0.7), and there is no graph here to keep it opaque in nor gradient to take.
        return deform_conv2d_reference(input, offset, mask, weight, bias, stride, padding, dilation, int(groups),
                                       int(offset_groups))
    return _deform_conv2d_op(input, offset, mask, weight, bias, list(stride), list(padding), list(dilation),
                             int(groups), int(offset_groups))


def flow_warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``features`` by ``flow``: out(y, x) = features(y + flow_y, x + flow_x).

    Args:
        features: (N, C, H, W).
        flow: (N, 2, H, W), channel 0 = x displacement, channel 1 = y, in pixels of
            ``features``; bilinear, zeros outside (as ``grid_sample(align_corners=True)``
            on pixel coordinates).

    A 1x1 depthwise deformable convolution with unit weight and the flow as offset: the
    same op as every other cross-frame sample, and one ``DeformConv`` node in ONNX.
    """
    c = features.shape[1]
    offset = torch.stack((flow[:, 1], flow[:, 0]), dim=1)  # (N, 2, H, W) as (dy, dx)
    weight = features.new_ones((c, 1, 1, 1))
    return deform_conv2d(features, offset.to(features.dtype), weight, groups=c)


class DeformConv2d(torch.nn.Module):
    """Thin module around :func:`deform_conv2d` holding weight and bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride=1, padding=None,
                 dilation=1, groups: int = 1, offset_groups: int = 1, bias: bool = True):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = _pair(padding) if padding is not None else (self.dilation[0] * (kh - 1) // 2,
                                                                   self.dilation[1] * (kw - 1) // 2)
        self.groups, self.offset_groups = groups, offset_groups
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if bias else None
        torch.nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, input, offset, mask=None):
        return deform_conv2d(input, offset, self.weight, self.bias, mask, self.stride, self.padding,
                             self.dilation, self.groups, self.offset_groups)
