"""LIF stream blocks: LaMa's fast Fourier convolution residual block, and a grouped-conv block.

Parameter names inside these modules follow LaMa's (``ffc.convl2l``, ``bn_g``,
``convg2g.fu.conv_layer``, ...): they are the field's common vocabulary for FFC, and it
keeps the mapping to the authors' checkpoints a matter of container names only.

An FFC layer splits channels into a local part (ordinary 3x3 convs) and a global part
(a 1x1 conv in the 2D Fourier domain: every output pixel sees the whole map).
"""
from __future__ import annotations

import torch
from torch import nn


class FourierUnit(nn.Module):
    """1x1 conv + BN + ReLU on the real 2D FFT (real and imaginary parts as channels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(in_channels * 2, out_channels * 2, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spec = torch.fft.rfftn(x.float(), dim=(-2, -1), norm="ortho")  # (B, C, H, W/2+1) complex
        # Interleave (real, imag) per channel: channel 2c = real part of c, 2c+1 = imaginary.
        spec = torch.stack((spec.real, spec.imag), dim=2).reshape(b, 2 * c, h, -1)  # (B, 2C, H, W/2+1)
        spec = self.relu(self.bn(self.conv_layer(spec.to(x.dtype))))
        spec = spec.float().reshape(b, -1, 2, h, spec.shape[-1])  # (B, C', 2, H, W/2+1)
        spec = torch.complex(spec[:, :, 0], spec[:, :, 1])
        return torch.fft.irfftn(spec, s=(h, w), dim=(-2, -1), norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    """The global->global path of an FFC: 1x1 conv down, Fourier unit (+ optional LFU), 1x1 up."""

    def __init__(self, in_channels: int, out_channels: int, enable_lfu: bool):
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, half, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        self.fu = FourierUnit(half, half)
        self.enable_lfu = enable_lfu
        if enable_lfu:
            self.lfu = FourierUnit(half, half)
        self.conv2 = nn.Conv2d(half, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        out = x + self.fu(x)
        if self.enable_lfu:
            # Local Fourier unit: a quarter of the channels, the map cut into 2x2 tiles stacked
            # as channels, transformed, and tiled back over the whole map. Like LaMa, both
            # cuts use H // 2 (so it needs square maps).
            n, c, h, w = x.shape
            xs = torch.cat(torch.split(x[:, : c // 4], h // 2, dim=-2), dim=1)
            xs = torch.cat(torch.split(xs, h // 2, dim=-1), dim=1)
            out = out + self.lfu(xs).repeat(1, 1, 2, 2)
        return self.conv2(out)


class FFC(nn.Module):
    """Fast Fourier convolution on a (local, global) pair of feature maps."""

    def __init__(self, channels: int, ratio_global: float, enable_lfu: bool = False, gated: bool = False):
        super().__init__()
        c_g = int(channels * ratio_global)
        c_l = channels - c_g
        conv = dict(kernel_size=3, padding=1, bias=False, padding_mode="reflect")
        self.convl2l = nn.Conv2d(c_l, c_l, **conv)
        self.convl2g = nn.Conv2d(c_l, c_g, **conv)
        self.convg2l = nn.Conv2d(c_g, c_l, **conv)
        self.convg2g = SpectralTransform(c_g, c_g, enable_lfu=enable_lfu)
        self.gated = gated
        if gated:
            self.gate = nn.Conv2d(channels, 2, kernel_size=1)

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor):
        if self.gated:
            g2l_gate, l2g_gate = torch.sigmoid(self.gate(torch.cat((x_l, x_g), dim=1))).chunk(2, dim=1)
            return (self.convl2l(x_l) + self.convg2l(x_g) * g2l_gate,
                    self.convl2g(x_l) * l2g_gate + self.convg2g(x_g))
        return self.convl2l(x_l) + self.convg2l(x_g), self.convl2g(x_l) + self.convg2g(x_g)


class FFCNormAct(nn.Module):
    """FFC followed by BatchNorm + ReLU on each of the two parts."""

    def __init__(self, channels: int, ratio_global: float, enable_lfu: bool, gated: bool):
        super().__init__()
        c_g = int(channels * ratio_global)
        self.ffc = FFC(channels, ratio_global, enable_lfu, gated)
        self.bn_l = nn.BatchNorm2d(channels - c_g)
        self.bn_g = nn.BatchNorm2d(c_g)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x_l, x_g):
        x_l, x_g = self.ffc(x_l, x_g)
        return self.act(self.bn_l(x_l)), self.act(self.bn_g(x_g))


class FFCResBlock(nn.Module):
    """Residual block of two FFC layers on a single tensor whose last channels are global.

    (B, C, H, W) -> (B, C, H, W); channels ``[:C - C_g]`` local, ``[C - C_g:]`` global.
    """

    def __init__(self, channels: int, ratio_global: float = 0.75, enable_lfu: bool = False, gated: bool = False):
        super().__init__()
        self.global_channels = int(channels * ratio_global)
        self.conv1 = FFCNormAct(channels, ratio_global, enable_lfu, gated)
        self.conv2 = FFCNormAct(channels, ratio_global, enable_lfu, gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = x.shape[1] - self.global_channels
        id_l, id_g = x[:, :split], x[:, split:]
        x_l, x_g = self.conv1(id_l, id_g)
        x_l, x_g = self.conv2(x_l, x_g)
        return torch.cat((id_l + x_l, id_g + x_g), dim=1)


class ConvResBlock(nn.Module):
    """Residual grouped 3x3 conv + BN + ReLU (the authors' 'conv' block type)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False, padding_mode="reflect")
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


def make_lif_block(cfg) -> nn.Module:
    """One LIF block of the configured type at the bottleneck width."""
    c = cfg.bottleneck_channels
    if cfg.block_type == "ffc":
        return FFCResBlock(c, cfg.ratio_global, cfg.enable_lfu, cfg.ffc_gated)
    return ConvResBlock(c, cfg.num_groups)
