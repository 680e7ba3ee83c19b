"""GIF stream: a grid of latent tokens that reads from, attends over, and writes back to LIF.

Shapes: LIF maps are (B, C, h, w) at 1/8 of the frame; latents are (B, N, D) with
N = S * S (S = ``num_latents_sqrt``), latent ``n = wy * S + wx`` owning window (wy, wx) of
the LIF map cut into an S x S grid. When h or w is not a multiple of S, the maps are
bilinearly resized (align_corners=True) to the nearest multiple for the read and the
write, and the write's result is resized back, as the authors do.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _round_half_even(x: float) -> int:
    # Python's round(): ties go to the even integer. The authors' resize uses it, and
    # parity with their weights depends on picking the same size.
    return int(round(x))


def resize_to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize (B, C, h, w) so that h and w are multiples of ``grid`` (unchanged if they are)."""
    h, w = x.shape[-2:]
    if h % grid == 0 and w % grid == 0:
        return x
    size = (grid * _round_half_even(h / grid), grid * _round_half_even(w / grid))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class FourierPositions(nn.Module):
    """Perceiver-style Fourier features of (y, x) in [-1, 1]: (1, 2 + 4 * bands, h, w).

    Channel order: y, x, sin(pi f_k y) (k = 1..bands), sin(pi f_k x), cos(... y), cos(... x),
    with ``bands`` frequencies linearly spaced from 1 to ``max_resolution / 2``.
    """

    def __init__(self, num_bands: int = 64, max_resolution: int = 32):
        super().__init__()
        self.num_bands, self.max_resolution = num_bands, max_resolution
        self._cache = {}

    @property
    def channels(self) -> int:
        return 2 + 4 * self.num_bands

    def forward(self, h: int, w: int, device, dtype) -> torch.Tensor:
        key = (h, w, str(device), dtype)
        if key not in self._cache:
            self._cache.clear()
            ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float32)
            xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float32)
            pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)  # (hw, 2)
            bands = torch.linspace(1.0, self.max_resolution / 2, self.num_bands, dtype=torch.float32)
            feats = (pos[:, :, None] * bands[None, None, :]).reshape(h * w, 2 * self.num_bands)
            feats = torch.cat((pos, torch.sin(math.pi * feats), torch.cos(math.pi * feats)), dim=-1)
            enc = feats.t().reshape(1, self.channels, h, w).to(device=device, dtype=dtype)
            self._cache[key] = enc
        return self._cache[key]


class LatentInit(nn.Module):
    """Adds position features to the LIF map (1x1 projection) and provides the initial latents."""

    def __init__(self, channels: int, num_latents_sqrt: int, latent_dim: int):
        super().__init__()
        self.positions = FourierPositions(num_bands=64, max_resolution=32)
        self.latents = nn.Parameter(torch.randn(num_latents_sqrt ** 2, latent_dim) * 0.02)
        self.project = nn.Conv2d(channels + self.positions.channels, channels, 1)

    def forward(self, lif: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = lif.shape
        pos = self.positions(h, w, lif.device, lif.dtype).expand(b, -1, -1, -1)
        return self.project(torch.cat((lif, pos), dim=1)), self.latents.expand(b, -1, -1)


class MLP(nn.Module):
    """Linear -> GELU -> Linear (or the same with 1x1 convs on maps)."""

    def __init__(self, dim: int, conv: bool = False):
        super().__init__()
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.dense1 = layer(dim, dim)
        self.act = nn.GELU()
        self.dense2 = layer(dim, dim)

    def forward(self, x):
        return self.dense2(self.act(self.dense1(x)))


class LatentRead(nn.Module):
    """Each latent reads its window of the LIF map: per head, a softmax over the window's pixels."""

    def __init__(self, lif_dim: int, latent_dim: int, num_latents_sqrt: int, heads: int):
        super().__init__()
        self.grid, self.heads = num_latents_sqrt, heads
        self.ln1 = nn.LayerNorm(latent_dim)
        self.ln2 = nn.LayerNorm(latent_dim)
        self.mlp = MLP(latent_dim)
        self.to_logits = nn.Conv2d(lif_dim, heads, 1)
        self.to_values = nn.Conv2d(lif_dim, latent_dim, 1)
        self.projection = nn.Linear(latent_dim, latent_dim)

    def forward(self, latents: torch.Tensor, lif: torch.Tensor) -> torch.Tensor:
        s, nh = self.grid, self.heads
        logits = resize_to_grid(self.to_logits(lif), s)  # (B, heads, H, W)
        values = resize_to_grid(self.to_values(lif), s)  # (B, D, H, W)
        b, _, h, w = logits.shape
        ph, pw = h // s, w // s
        d = values.shape[1] // nh
        # (B, heads, S, ph, S, pw) -> (B, heads, S, S, ph*pw)
        logits = logits.reshape(b, nh, s, ph, s, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, nh, s, s, ph * pw)
        # (B, heads, d, S, ph, S, pw) -> (B, heads, S, S, ph*pw, d)
        values = values.reshape(b, nh, d, s, ph, s, pw).permute(0, 1, 3, 5, 4, 6, 2).reshape(b, nh, s, s, ph * pw, d)
        attn = torch.softmax(logits, dim=-1).unsqueeze(-2)  # (B, heads, S, S, 1, ph*pw)
        read = torch.matmul(attn, values).squeeze(-2)  # (B, heads, S, S, d)
        read = read.permute(0, 2, 3, 1, 4).reshape(b, s * s, nh * d)  # (B, N, D) with D = (heads d)
        latents = latents + self.projection(self.ln1(read))
        return latents + self.mlp(self.ln2(latents))


class LatentWrite(nn.Module):
    """Each LIF pixel takes its window's latent, gated per head by a sigmoid of its own logit."""

    def __init__(self, lif_dim: int, latent_dim: int, num_latents_sqrt: int, heads: int):
        super().__init__()
        self.grid, self.heads = num_latents_sqrt, heads
        self.ln1 = nn.BatchNorm2d(lif_dim)
        self.ln2 = nn.BatchNorm2d(lif_dim)
        self.mlp = MLP(lif_dim, conv=True)
        self.to_logits = nn.Conv2d(lif_dim, heads, 1)
        self.to_values = nn.Linear(latent_dim, lif_dim)
        self.projection = nn.Conv2d(lif_dim, lif_dim, 1)

    def forward(self, lif: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        s, nh = self.grid, self.heads
        out_h, out_w = lif.shape[-2:]
        gates = torch.sigmoid(resize_to_grid(self.to_logits(lif), s))  # (B, heads, H, W)
        b, _, h, w = gates.shape
        ph, pw = h // s, w // s
        values = self.to_values(latents)  # (B, N, C)
        c = values.shape[-1] // nh
        # (B, S, S, heads, c) -> (B, heads, c, S, 1, S, 1): one value per window, spread over it
        values = values.reshape(b, s, s, nh, c).permute(0, 3, 4, 1, 2)[:, :, :, :, None, :, None]
        gates = gates.reshape(b, nh, 1, s, ph, s, pw)
        written = (gates * values).reshape(b, nh * c, h, w)  # (B, C, H, W)
        if (h, w) != (out_h, out_w):
            written = F.interpolate(written, size=(out_h, out_w), mode="bilinear", align_corners=True)
        lif = lif + self.projection(self.ln1(written))
        return lif + self.mlp(self.ln2(lif))


class LatentAttention(nn.Module):
    """Pre-norm self-attention over latents (+ MLP); may also attend to extra keys/values.

    ``extra_kv``: keys and values (each (B, heads, M, d)) appended after the latents' own,
    e.g. the keyframes' latents. ``keys_values(x)`` returns this layer's own keys/values of
    ``x``, which is what a keyframe contributes.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.layernorm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.projection = nn.Linear(dim, dim)
        self.ln_premlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d)

    def keys_values(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.layernorm1(x)
        return self._split_heads(self.key(h)), self._split_heads(self.value(h))

    def forward(self, x: torch.Tensor, extra_kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        b, n, d = x.shape
        h = self.layernorm1(x)
        q, k, v = (self._split_heads(layer(h)) for layer in (self.query, self.key, self.value))
        if extra_kv is not None:
            k = torch.cat((k, extra_kv[0]), dim=2)
            v = torch.cat((v, extra_kv[1]), dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        x = x + self.projection(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln_premlp(x))
