"""Custom ops: ``deform_conv2d`` (torch.library ``keyprop::deform_conv2d``) and the flow warp built on it."""
from .deform_conv import DeformConv2d, deform_conv2d, deform_conv2d_reference, flow_warp

__all__ = ["DeformConv2d", "deform_conv2d", "deform_conv2d_reference", "flow_warp"]
