"""What a run may change: one dataclass, whose fields are the CLI's flags and a job YAML's keys."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from .errors import KeypropInputError

__all__ = ["Settings"]


@dataclass
class Settings:
    """What a run may change; the CLI's flags and a job YAML's keys have these names."""

    model: Optional[str] = None      # keyprop .pt file; None = the shipped default model
    backend: str = "torch"           # 'torch' or 'onnx'
    device: str = "auto"             # 'auto', 'cpu' or 'cuda'
    dilate: int = 0                  # grow the mask by this many pixels before compositing
    feather: float = 0.0             # soften the composite edge (pixels, Gaussian sigma)
    max_keys: int = 2                # keyframes that serve one target (nearest first)
    max_sources: int = 4             # sources per target when plate frames stand in for keyframes
    work_res: int = 640              # long side of the ROI at the network
    margin: float = 0.5              # context around the masks' bounding box, fraction of its size
    linear: Optional[bool] = None    # plate is scene-linear; None = EXR/float linear, integers display
    detail: bool = True              # restore plate-resolution keyframe detail where the ROI was downscaled
    warp_blend: bool = True          # take the flow-warped sources where their flow is consistent
    plate_sources: bool = True       # plate frames that show the hole serve beside keyframes
    colour_match: bool = True        # match each warped source's exposure to the target
    prealign: bool = True            # pre-align sources by a feature homography before DIS
    gradient_domain: bool = True     # compose the fill in the gradient domain (no seams at the border or between sources)
    temporal: bool = True            # carry each frame's fill to the next frame of its window (core.temporal)
    refine: bool = True              # with a fused_base model: the network corrects every fused fill
    threads: Optional[int] = None    # CPU threads for the engine (None = all)
    parallel_windows: int = 1        # temporal windows filled side by side (same pixels; at most threads); 1 = one frame after another (lookahead threads find the next frames' flows)

    @classmethod
    def from_mapping(cls, data: dict, where: str = "settings") -> "Settings":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeypropInputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}",
                                    where)
        return cls(**data)
