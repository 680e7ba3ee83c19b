"""Architecture config of the two-stream network, and the weights' provenance record.

``NetConfig`` describes the architecture only; where the weights came from is a separate
``Provenance`` record (as timm separates ``PretrainedCfg`` from the model config).
``NetConfig.from_reference`` reads the authors' generator constructor arguments
(``GIResNetGenerator`` in runwayml/guided-inpainting, names as in configs/ours.yaml).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class NetConfig:
    # --- shared encoder / decoder -----------------------------------------------------
    input_nc: int = 4            # RGB (hole zeroed) + mask channel (1 = hole), the authors' input
    output_nc: int = 3           # RGB fill
    ngf: int = 64                # width after the 7x7 stem; doubles at each downsampling
    n_downsampling: int = 3      # 3 -> the streams run at 1/8 resolution (inputs multiple of 8)
    max_features: int = 1024     # cap on the width while downsampling
    out_act: str = "sigmoid"     # 'sigmoid' (paper: output in [0, 1]), 'tanh' or 'none'
    # --- LIF stream: locally interacting features ---------------------------------------
    n_blocks: int = 4            # two-stream blocks at the bottleneck (paper: 4)
    block_type: str = "ffc"      # 'ffc' (LaMa fast Fourier conv, paper) or 'conv' (grouped 3x3)
    ratio_global: float = 0.75   # FFC: share of channels in the spectral (global) branch
    enable_lfu: bool = False     # FFC: LaMa's local Fourier unit (off in the paper preset)
    ffc_gated: bool = False      # FFC: gates on the local<->global paths (off in the paper)
    num_groups: int = 4          # groups of the 'conv' block type
    pre_blocks: int = 0          # extra FFC blocks before the streams start (authors' pre_lama)
    post_blocks: int = 0         # extra FFC blocks after the streams end (authors' post_lama)
    # --- GIF stream: globally interacting features --------------------------------------
    num_latents_sqrt: int = 16   # latent grid side: each latent reads one window of the LIF map
    latent_dim: int = 512        # latent width (authors: fixed 512, equal to the bottleneck)
    num_heads: int = 8           # heads of the latent self-attention
    read_write_heads: int = 8    # heads of the LIF<->latent read and write
    # --- cross-frame interaction ----------------------------------------------------------
    cross_attention: bool = True  # target latents also attend to the keyframes' latents
    deformable: bool = True       # keyframe LIF warped along the flow and mixed in
    n_cross: int = 2              # how many first blocks interact with the keyframes
    warp_kernel: int = 1          # 1 = the paper's one-point flow warp; k>1 = k x k modulated
                                  # deformable conv with learned offset residuals (ours)
    warp_offset_groups: int = 8   # offset groups of the k x k warp (ignored for k = 1)
    # --- output ---------------------------------------------------------------------------
    context_base: bool = False    # ours: inputs arrive with the hole prefilled from its
                                  # surroundings (Telea) and the output logits are a residual
                                  # on the target's logit: colour comes from the frame's own
                                  # context from the first step of training
    fused_base: bool = False      # ours (needs context_base): the target's hole arrives filled
                                  # by the shot pipeline's fusion (warped sources, composed in the
                                  # gradient domain) rather than by Telea, and the network learns
                                  # the correction to it (core.filler refines every fill with it)
    fused_gate: bool = False      # ours (needs fused_base): the correction is scaled per pixel by
                                  # 1 - the confidence that some source shows the base there (a
                                  # warped source, inside its frame and off its hole, with a small
                                  # flow error, that agrees with the base): where the fusion is
                                  # already right the correction cannot change it

    def __post_init__(self):
        if not 0.0 < self.ratio_global < 1.0 and self.block_type == "ffc":
            raise ValueError(f"ratio_global must be in (0, 1) for FFC blocks, got {self.ratio_global}")
        if self.block_type not in ("ffc", "conv"):
            raise ValueError(f"block_type must be 'ffc' or 'conv', got {self.block_type!r}")
        if self.out_act not in ("sigmoid", "tanh", "none"):
            raise ValueError(f"out_act must be 'sigmoid', 'tanh' or 'none', got {self.out_act!r}")
        if self.context_base and self.out_act != "sigmoid":
            raise ValueError(f"context_base needs out_act 'sigmoid' (a residual in logits), got {self.out_act!r}")
        if self.fused_base and not self.context_base:
            raise ValueError("fused_base needs context_base (the correction is a residual on the fused fill)")
        if self.fused_gate and not self.fused_base:
            raise ValueError("fused_gate needs fused_base (it gates the correction of the fused fill)")
        if self.warp_kernel < 1 or self.warp_kernel % 2 == 0:
            raise ValueError(f"warp_kernel must be an odd number >= 1, got {self.warp_kernel}")
        if self.bottleneck_channels != self.latent_dim:
            raise ValueError(f"latent_dim ({self.latent_dim}) must equal the bottleneck width "
                             f"({self.bottleneck_channels}): the read/write layers map one onto the other")

    @property
    def bottleneck_channels(self) -> int:
        return min(self.max_features, self.ngf * 2 ** self.n_downsampling)

    @property
    def n_keyframe_blocks(self) -> int:
        """Blocks through which keyframes must run (their LIF / latents feed the target)."""
        if not (self.cross_attention or self.deformable):
            return 0
        return min(self.n_blocks, self.n_cross)

    @property
    def stride(self) -> int:
        """Inputs must have H and W divisible by this."""
        return 2 ** self.n_downsampling

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "NetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown NetConfig fields: {sorted(unknown)}")
        return cls(**data)

    # --- the authors' constructor arguments ---------------------------------------------
    @classmethod
    def from_reference(cls, config: Dict[str, Any]) -> "NetConfig":
        """Build from ``GIResNetGenerator`` keyword arguments (the authors' names).

        Accepts the mapping as written in their YAML (a ``kind`` key is ignored). Defaults
        are the constructor's own defaults, not the paper's: e.g. ``n_blocks`` defaults to
        9, ``block_type`` to 'conv', ``is_deformable`` to False.
        """
        cfg = {k: v for k, v in dict(config).items() if k not in ("kind", "target")}
        conv_kwargs = dict(cfg.pop("resnet_conv_kwargs", None) or {})
        ratio_gin = conv_kwargs.pop("ratio_gin", 0.75)
        ratio_gout = conv_kwargs.pop("ratio_gout", ratio_gin)
        if isinstance(ratio_gout, str):  # an unresolved OmegaConf interpolation to ratio_gin
            ratio_gout = ratio_gin
        if float(ratio_gin) != float(ratio_gout):
            raise ValueError(f"resnet_conv_kwargs: ratio_gin ({ratio_gin}) != ratio_gout ({ratio_gout}) "
                             "is not supported by the inline residual blocks")
        enable_lfu = bool(conv_kwargs.pop("enable_lfu", True))
        gated = bool(conv_kwargs.pop("gated", False))
        if conv_kwargs:
            raise ValueError(f"resnet_conv_kwargs not supported: {sorted(conv_kwargs)}")
        add_out_act = cfg.pop("add_out_act", True)
        out_act = {True: "tanh", False: "none", "tanh": "tanh", "sigmoid": "sigmoid"}.get(add_out_act)
        if out_act is None:
            raise ValueError(f"add_out_act={add_out_act!r} is not supported")
        simple = dict(
            input_nc=("input_nc", None), output_nc=("output_nc", None), ngf=("ngf", 64),
            n_downsampling=("n_downsampling", 3), max_features=("max_features", 1024),
            n_blocks=("n_blocks", 9), block_type=("block_type", "conv"), num_groups=("num_groups", 4),
            pre_blocks=("pre_lama", 0), post_blocks=("post_lama", 0),
            num_latents_sqrt=("num_latents_sqrt", 16), num_heads=("num_heads", 8),
            read_write_heads=("read_write_heads", 8), cross_attention=("is_crossattending", False),
            deformable=("is_deformable", False), n_cross=("n_cross", 1000),
        )
        kwargs: Dict[str, Any] = {}
        for ours, (theirs, default) in simple.items():
            if theirs in cfg:
                kwargs[ours] = cfg.pop(theirs)
            elif default is None:
                raise ValueError(f"generator config lacks the required argument {theirs!r}")
            else:
                kwargs[ours] = default
        for key in ("padding_type",):
            value = cfg.pop(key, "reflect")
            if value != "reflect":
                raise ValueError(f"{key}={value!r} is not supported (the authors use 'reflect')")
        if cfg:
            raise ValueError(f"generator arguments not supported: {sorted(cfg)}")
        kwargs.update(ratio_global=float(ratio_gin), enable_lfu=enable_lfu, ffc_gated=gated,
                      out_act=out_act, latent_dim=512, warp_kernel=1)
        return cls(**kwargs)

    def to_reference(self) -> Dict[str, Any]:
        """The authors' constructor arguments for this config (inverse of from_reference)."""
        if self.warp_kernel != 1 or self.latent_dim != 512 or self.context_base or self.fused_base or self.fused_gate:
            raise ValueError("this config has no equivalent in the authors' generator "
                             f"(warp_kernel={self.warp_kernel}, latent_dim={self.latent_dim}, "
                             f"context_base={self.context_base})")
        return dict(
            input_nc=self.input_nc, output_nc=self.output_nc, ngf=self.ngf, n_downsampling=self.n_downsampling,
            max_features=self.max_features, n_blocks=self.n_blocks, block_type=self.block_type,
            num_groups=self.num_groups, pre_lama=self.pre_blocks, post_lama=self.post_blocks,
            num_latents_sqrt=self.num_latents_sqrt, num_heads=self.num_heads,
            read_write_heads=self.read_write_heads, is_crossattending=self.cross_attention,
            is_deformable=self.deformable, n_cross=self.n_cross,
            add_out_act={"sigmoid": "sigmoid", "tanh": "tanh", "none": False}[self.out_act],
            resnet_conv_kwargs=dict(ratio_gin=self.ratio_global, ratio_gout=self.ratio_global,
                                    enable_lfu=self.enable_lfu, gated=self.ffc_gated),
        )


@dataclass
class Provenance:
    """Where a set of weights came from: kept beside the weights, apart from the architecture."""

    origin: str = "untrained"     # 'keyprop-train', 'authors-checkpoint', 'random-init', ...
    licence: str = "MIT"
    data: str = ""                # what it was trained on
    steps: int = 0
    notes: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> "Provenance":
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in names}
        prov = cls(**data)
        prov.extra.update(extra)
        return prov
