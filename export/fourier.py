"""The FFC Fourier unit for export with its 2D real FFT as matrix products (for onnxruntime on CPU).

torch's exporter writes ``rfftn`` / ``irfftn`` as ONNX ``DFT`` nodes (the default export).
onnxruntime's CPU ``DFT`` kernel is a single-threaded O(n^2) loop for lengths that are not a
power of two, which is what the bottleneck of a 960x544 frame has (68 x 120): it would cost
more than the rest of the network. Graphs are exported per frame size anyway, so the
transforms can be written as products with constant DFT matrices of that size (``MatMul``,
multi-threaded): the same linear map, different float rounding (about 1e-6 relative).

For x (B, C, h, w) real, orthonormal scaling, K = w // 2 + 1 frequencies kept along w::

    rfft2:   Z = x @ (Cw - i Sw)           (B, C, h, K)     Cw[n, k] = cos(2 pi n k / w) / sqrt(w)
             X = (Ch - i Sh) @ Z            (B, C, h, K)     Ch[m, n] = cos(2 pi m n / h) / sqrt(h)
    irfft2:  Y = (Ch + i Sh) @ X
             x = Re(Y) @ Ew - Im(Y) @ Fw    (B, C, h, w)     Ew[k, n] = c_k cos(2 pi k n / w) / sqrt(w),
                                                              c_k = 2 except 1 at k = 0 and k = w / 2
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.model.lif import FourierUnit


def _dft_tables(h: int, w: int):
    k = w // 2 + 1
    n_w = torch.arange(w, dtype=torch.float64)
    k_w = torch.arange(k, dtype=torch.float64)
    angle_w = 2 * math.pi * torch.outer(n_w, k_w).remainder(w) / w  # (w, K); remainder keeps angles exact
    cw, sw = torch.cos(angle_w) / math.sqrt(w), torch.sin(angle_w) / math.sqrt(w)
    n_h = torch.arange(h, dtype=torch.float64)
    angle_h = 2 * math.pi * torch.outer(n_h, n_h).remainder(h) / h  # (h, h), symmetric
    ch, sh = torch.cos(angle_h) / math.sqrt(h), torch.sin(angle_h) / math.sqrt(h)
    weight = torch.full((k, 1), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    ew, fw = weight * cw.t(), weight * sw.t()  # (K, w)
    return [t.float() for t in (cw, sw, ch, sh, ew, fw)]


class MatmulFourierUnit(nn.Module):
    """Same function as :class:`~keyprop.core.model.lif.FourierUnit` (and its weights) for one map size."""

    def __init__(self, unit: FourierUnit, h: int, w: int):
        super().__init__()
        self.conv_layer, self.bn, self.relu = unit.conv_layer, unit.bn, unit.relu
        self.size = (h, w)
        for name, table in zip(("cw", "sw", "ch", "sh", "ew", "fw"), _dft_tables(h, w)):
            self.register_buffer(name, table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.size:
            raise ValueError(f"MatmulFourierUnit built for {self.size}, got a {h}x{w} map")
        xf = x.float()
        z_re, z_im = xf @ self.cw, -(xf @ self.sw)  # (B, C, h, K)
        re = self.ch @ z_re + self.sh @ z_im
        im = self.ch @ z_im - self.sh @ z_re
        spec = torch.stack((re, im), dim=2).reshape(b, 2 * c, h, -1)  # (B, 2C, h, K) as FourierUnit interleaves
        spec = self.relu(self.bn(self.conv_layer(spec.to(x.dtype))))
        spec = spec.float().reshape(b, -1, 2, h, spec.shape[-1])  # (B, C', 2, h, K)
        re, im = spec[:, :, 0], spec[:, :, 1]
        y_re = self.ch @ re - self.sh @ im
        y_im = self.ch @ im + self.sh @ re
        return (y_re @ self.ew - y_im @ self.fw).to(x.dtype)


def use_matmul_fft(model: nn.Module, size) -> nn.Module:
    """Replace, in place, every FourierUnit of a KeyPropNet by its matmul form for frames of ``size`` (H, W).

    Fourier units run on the bottleneck map (H / stride, W / stride); LaMa's local Fourier
    unit (``lfu``, off in every preset) runs on half of it.
    """
    h, w = size[0] // model.cfg.stride, size[1] // model.cfg.stride
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FourierUnit):
                scale = 2 if name == "lfu" else 1
                setattr(parent, name, MatmulFourierUnit(child, h // scale, w // scale))
    return model
