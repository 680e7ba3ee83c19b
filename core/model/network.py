"""The two-stream keyframe propagation network (Esser, Michael, Sengupta 2022).

Read top to bottom: encoder, two-stream block, decoder, the network with its keyframe
cache. Tensors follow the authors' conventions:

- ``input`` (B, 4, H, W): target RGB in [0, 1] times (1 - mask), then the mask (1 = hole).
- ``srcs``  (B, T, 4, H, W): the same for each keyframe (a keyframe may have a hole too).
- ``flows`` (B, T, 2, H, W): per keyframe, pixel displacement (channel 0 = x, 1 = y) at
  which to sample the keyframe for each target pixel (bilinear, zeros outside).
- ``flow_errs`` (B, T, 1, H, W): the flow's consistency error, per pixel.
- output (B, 3, H, W) in [0, 1] (after the sigmoid). H and W are multiples of 8.

With ``context_base`` (ours, off in the paper preset) every input frame arrives with its hole
already filled from its own surroundings (:func:`keyprop.core.model.context.prefill`, Telea;
the mask channel still marks the hole), and the decoder's logits are added to the logit of
the target's RGB: the network learns what to change about that first fill (texture,
structure, what the keyframes show) instead of the colours of the whole frame.

Keyframe-side work (encoder, the keyframes' own pass through the first ``n_cross``
blocks, their attention keys/values) depends only on the keyframes: ``encode_keyframes``
computes it once into a :class:`KeyframeCache`, and ``fill`` runs one target against it.
``forward`` does both, which is what the authors' generator computes for every target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..ops import flow_warp
from .config import NetConfig
from .gif import LatentAttention, LatentInit, LatentRead, LatentWrite
from .lif import FFCResBlock, make_lif_block
from .warp import KeyframeWarp


class ConvNormAct(nn.Module):
    """Conv (reflect padding, no bias) + BatchNorm + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False, padding_mode="reflect")
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class UpNormAct(nn.Module):
    """Transposed conv (x2) + BatchNorm + ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.norm(self.deconv(x)))


CONTEXT_EPS = 1e-3      # the context fill is clamped to [eps, 1 - eps] before its logit
GATE_COLOUR = 0.04      # fused_gate: mean |warped source - base| (RGB in [0, 1]) at which a
                        # source's agreement has fallen to 1/e
GATE_FLOW_ERROR = 1.0   # fused_gate: flow consistency error (pixels) at which a source's
                        # trust has fallen to 1/e


def source_confidence(frames: torch.Tensor, flows: torch.Tensor, flow_errs: torch.Tensor,
                      base: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1]: how sure the fused fill ``base`` (B, 3, H, W) is, per pixel.

    Each keyframe in ``frames`` (B, T, 4, H, W; RGB, then its hole mask) is warped along its
    flow; it vouches for a pixel as much as it shows it (inside its frame, off its hole), its
    flow error is small and its colour agrees with the base. The best keyframe counts.
    """
    b, t, _, h, w = frames.shape
    shown = torch.cat((frames[:, :, :3], 1.0 - frames[:, :, 3:4]), dim=2).reshape(b * t, 4, h, w)
    warped = flow_warp(shown, flows.reshape(b * t, 2, h, w)).reshape(b, t, 4, h, w)
    differ = (warped[:, :, :3] - base[:, None]).abs().mean(dim=2, keepdim=True)
    trust = warped[:, :, 3:4].clamp(0.0, 1.0) * torch.exp(-flow_errs / GATE_FLOW_ERROR - differ / GATE_COLOUR)
    return trust.amax(dim=1)


class Encoder(nn.Module):
    """Shared encoder: 7x7 stem, strided 3x3 convs down to 1/2**n, optional FFC blocks."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.stem = ConvNormAct(cfg.input_nc, cfg.ngf, 7)
        widths = [min(cfg.max_features, cfg.ngf * 2 ** i) for i in range(cfg.n_downsampling + 1)]
        self.down = nn.ModuleList(ConvNormAct(widths[i], widths[i + 1], 3, stride=2)
                                  for i in range(cfg.n_downsampling))
        self.pre_blocks = nn.ModuleList(FFCResBlock(cfg.bottleneck_channels, cfg.ratio_global, cfg.enable_lfu,
                                                    cfg.ffc_gated) for _ in range(cfg.pre_blocks))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.down:
            x = layer(x)
        for block in self.pre_blocks:
            x = block(x)
        return x


class TwoStreamBlock(nn.Module):
    """One block: latents read LIF, attend (optionally to keyframe latents), LIF convs, write back.

    The LIF convolutions do not depend on the latents of this block, only the write does.
    """

    def __init__(self, cfg: NetConfig, with_warp: bool):
        super().__init__()
        c, d, s = cfg.bottleneck_channels, cfg.latent_dim, cfg.num_latents_sqrt
        self.latent_read = LatentRead(c, d, s, cfg.read_write_heads)
        self.latent_attn_cross = LatentAttention(d, cfg.num_heads)
        self.latent_attn_self = LatentAttention(d, cfg.num_heads)
        self.lif_block1 = make_lif_block(cfg)
        self.lif_block2 = make_lif_block(cfg)
        self.latent_write = LatentWrite(c, d, s, cfg.read_write_heads)
        if with_warp:
            self.keyframe_warp = KeyframeWarp(c, cfg.warp_kernel, cfg.warp_offset_groups)

    def forward(self, lif, latents, extra_kv=None, return_kv=False):
        latents = self.latent_read(latents, lif)
        kv = self.latent_attn_cross.keys_values(latents) if return_kv else None
        latents = self.latent_attn_self(self.latent_attn_cross(latents, extra_kv))
        lif = self.latent_write(self.lif_block2(self.lif_block1(lif)), latents)
        return lif, latents, kv


class Decoder(nn.Module):
    """Optional FFC blocks, transposed convs back to full resolution, 7x7 conv to RGB logits."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.post_blocks = nn.ModuleList(FFCResBlock(cfg.bottleneck_channels, cfg.ratio_global, cfg.enable_lfu,
                                                     cfg.ffc_gated) for _ in range(cfg.post_blocks))
        n = cfg.n_downsampling
        widths = [min(cfg.max_features, int(cfg.ngf * 2 ** (n - i))) for i in range(n)]
        outs = [min(cfg.max_features, int(cfg.ngf * 2 ** (n - i) / 2)) for i in range(n)]
        self.up = nn.ModuleList(UpNormAct(widths[i], outs[i]) for i in range(n))
        self.to_rgb = nn.Conv2d(cfg.ngf, cfg.output_nc, 7, padding=3, padding_mode="reflect")

    def forward(self, x):
        for block in self.post_blocks:
            x = block(x)
        for layer in self.up:
            x = layer(x)
        return self.to_rgb(x)


@dataclass
class KeyframeCache:
    """Everything the target pass needs from a set of T keyframes.

    ``lifs[i]``: (B, T, C, h, w) keyframe LIF after block i (for the warp).
    ``kv[i]``: (keys, values), each (B, heads, T * N, d), of block i's cross attention.
    ``size``: (H, W) of the frames they were computed at.
    ``frames``: (B, T, 4, H, W) the keyframes themselves (``fused_gate`` models only, for the gate).
    """

    size: Tuple[int, int]
    count: int
    lifs: List[torch.Tensor] = field(default_factory=list)
    kv: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    frames: Optional[torch.Tensor] = None

    @staticmethod
    def cat(caches: Sequence["KeyframeCache"]) -> "KeyframeCache":
        """Join caches of single keyframes (or sets) along T, in the given order."""
        if not caches:
            raise ValueError("KeyframeCache.cat needs at least one cache")
        if len({c.size for c in caches}) != 1:
            raise ValueError(f"keyframe caches of different sizes: {[c.size for c in caches]}")
        if len(caches) == 1:
            return caches[0]
        lifs = [torch.cat(parts, dim=1) for parts in zip(*(c.lifs for c in caches))]
        kv = [(torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2))
              for parts in zip(*(c.kv for c in caches))]
        frames = None if caches[0].frames is None else torch.cat([c.frames for c in caches], dim=1)
        return KeyframeCache(caches[0].size, sum(c.count for c in caches), lifs, kv, frames)

    def nbytes(self) -> int:
        tensors = list(self.lifs) + [t for pair in self.kv for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)


class KeyPropNet(nn.Module):
    """Two-stream network: LIF (conv/FFC) and GIF (latent attention) streams, keyframe warp."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.latent_init = LatentInit(cfg.bottleneck_channels, cfg.num_latents_sqrt, cfg.latent_dim)
        # The authors build one warp per block up to n_cross (at least one when deformable).
        n_warps = min(cfg.n_blocks, max(cfg.n_cross, 1)) if cfg.deformable else 0
        self.blocks = nn.ModuleList(TwoStreamBlock(cfg, with_warp=i < n_warps) for i in range(cfg.n_blocks))
        self.decoder = Decoder(cfg)
        self.out_act = {"sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "none": nn.Identity()}[cfg.out_act]

    # --- checks -------------------------------------------------------------------------
    @property
    def min_side(self) -> int:
        """The fewest pixels a side (in whole strides) that check_size lets through."""
        return self.cfg.stride * self.cfg.num_latents_sqrt // 2 + self.cfg.stride

    def check_size(self, h: int, w: int, what: str = "frames") -> None:
        """Raise ValueError unless (h, w) can run through the network."""
        stride, grid = self.cfg.stride, self.cfg.num_latents_sqrt
        if h % stride or w % stride:
            raise ValueError(f"{what}: height and width must be multiples of {stride}, got {h}x{w}")
        if round(h / stride / grid) < 1 or round(w / stride / grid) < 1:
            raise ValueError(f"{what}: {h}x{w} is too small for a {grid}x{grid} latent grid "
                             f"(need at least {self.min_side} pixels a side)")

    # --- the two passes -----------------------------------------------------------------
    def encode(self, frames: torch.Tensor):
        """(N, 4, H, W) -> LIF (N, C, h, w) with positions, initial latents (N, S*S, D)."""
        if getattr(self, "channels_last", False):
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.latent_init(self.encoder(frames))

    @property
    def n_keyframe_blocks(self) -> int:
        return self.cfg.n_keyframe_blocks

    def encode_keyframes(self, srcs: torch.Tensor) -> KeyframeCache:
        """Keyframe-only work for ``srcs`` (B, T, 4, H, W), done once per keyframe set."""
        if srcs.dim() != 5:
            raise ValueError(f"srcs must be (B, T, C, H, W), got shape {tuple(srcs.shape)}")
        b, t, c, h, w = srcs.shape
        self.check_size(h, w, "keyframes")
        cache = KeyframeCache(size=(h, w), count=t, frames=srcs if self.cfg.fused_gate else None)
        n_blocks = self.n_keyframe_blocks
        if n_blocks == 0:
            return cache
        lif, latents = self.encode(srcs.reshape(b * t, c, h, w))
        for block in self.blocks[:n_blocks]:
            lif, latents, (keys, values) = block(lif, latents, return_kv=True)
            if self.cfg.deformable:
                cache.lifs.append(lif.reshape(b, t, *lif.shape[1:]))  # (B, T, C, h, w)
            if self.cfg.cross_attention:
                heads, n, d = keys.shape[1:]
                # (B*T, heads, N, d) -> (B, heads, T*N, d), keyframe-major as the authors concatenate
                keys, values = (x.reshape(b, t, heads, n, d).transpose(1, 2).reshape(b, heads, t * n, d)
                                for x in (keys, values))
                cache.kv.append((keys, values))
        return cache

    def fill(self, input: torch.Tensor, cache: KeyframeCache, flows: Optional[torch.Tensor] = None,
             flow_errs: Optional[torch.Tensor] = None, return_logits: bool = False):
        """One target (B, 4, H, W) against cached keyframes -> (B, 3, H, W) [, logits]."""
        h, w = input.shape[-2:]
        self.check_size(h, w, "target")
        if cache.size != (h, w):
            raise ValueError(f"target is {h}x{w} but the keyframes were encoded at {cache.size[0]}x{cache.size[1]}")
        n_cross = min(self.cfg.n_cross, self.cfg.n_blocks)
        if self.cfg.deformable and n_cross > 0 and (flows is None or flow_errs is None):
            raise ValueError("this model warps keyframes along the flow: flows and flow_errs are required")
        lif, latents = self.encode(input)
        for i, block in enumerate(self.blocks):
            cross = i < n_cross
            kv = cache.kv[i] if cross and self.cfg.cross_attention else None
            lif, latents, _ = block(lif, latents, extra_kv=kv)
            if cross and self.cfg.deformable:
                lif = block.keyframe_warp(lif, cache.lifs[i], flows, flow_errs)
        logits = self.decoder(lif)
        if self.cfg.fused_gate:
            logits = logits * (1.0 - source_confidence(cache.frames, flows, flow_errs, input[:, :3]))
        if self.cfg.context_base:
            logits = logits + torch.logit(input[:, :3].clamp(CONTEXT_EPS, 1.0 - CONTEXT_EPS))
        out = self.out_act(logits)
        return (out, logits) if return_logits else out

    def forward(self, input: torch.Tensor, srcs: torch.Tensor, flows: Optional[torch.Tensor] = None,
                flow_errs: Optional[torch.Tensor] = None, return_logits: bool = False):
        """The authors' generator call: ``(input, srcs, flows, flow_errs)`` -> output (B, 3, H, W)."""
        if input.dim() != 4 or srcs.dim() != 5 or input.shape[0] != srcs.shape[0] \
                or input.shape[1:] != srcs.shape[2:]:
            raise ValueError(f"input (B, C, H, W) and srcs (B, T, C, H, W) disagree: "
                             f"{tuple(input.shape)} vs {tuple(srcs.shape)}")
        return self.fill(input, self.encode_keyframes(srcs), flows, flow_errs, return_logits)
