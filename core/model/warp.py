"""Deformable aggregation: keyframe LIF sampled into the target's geometry and mixed in.

All sampling goes through ``keyprop::deform_conv2d`` (see core.ops). The paper's variant
(``kernel=1``) warps each keyframe's LIF by its flow with a one-point bilinear sample; our
variant (``kernel=k>1``) samples a k x k neighbourhood around the flowed position with
learned offset residuals and modulation, predicted from the target's features, the warped
keyframe features and the flow error: it can detect and correct errors of the flow.

In both, the target mixes the T keyframes with softmax weights (over T) from
``[warped, flow_error, target]`` and adds the mixture to its LIF.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import deform_conv2d, flow_warp


def resize_flow(flow: torch.Tensor, size) -> torch.Tensor:
    """Resize a (N, 2, H, W) pixel flow (x, y) to ``size`` = (h, w), rescaling its vectors.

    Bilinear with align_corners=True, vectors scaled by h/H and w/W, as the authors do.
    """
    h0, w0 = flow.shape[-2:]
    if (h0, w0) == tuple(size):
        return flow
    flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=True)
    scale = torch.tensor([size[1] / w0, size[0] / h0], dtype=flow.dtype, device=flow.device)
    return flow * scale.view(1, 2, 1, 1)


class KeyframeWarp(nn.Module):
    """Mix T keyframe LIF maps into the target LIF along their flows.

    forward(lif (B, C, h, w), key_lif (B, T, C, h, w), flows (B, T, 2, H, W),
    flow_errs (B, T, 1, H, W)) -> (B, C, h, w). Flows are in pixels of the frame (H, W),
    channel 0 = x; they tell where to sample the keyframe for each target pixel.
    """

    def __init__(self, channels: int, kernel: int = 1, offset_groups: int = 8):
        super().__init__()
        self.kernel = kernel
        self.q = nn.Conv2d(2 * channels + 1, channels, 1)
        self.v = nn.Conv2d(channels + 1, channels, 1)
        if kernel > 1:
            k2 = kernel * kernel
            self.offset_groups = offset_groups
            # Offset residuals (dy, dx per group and kernel point) and modulation logits.
            # A 1x1 squeeze first: the 3x3 conv then runs on C/4 channels, not 2C+1.
            self.control = nn.Sequential(
                nn.Conv2d(2 * channels + 1, channels // 4, 1), nn.ReLU(inplace=True),
                nn.Conv2d(channels // 4, 3 * offset_groups * k2, 3, padding=1))
            nn.init.zeros_(self.control[-1].weight)
            nn.init.zeros_(self.control[-1].bias)
            self.sample_weight = nn.Parameter(torch.zeros(channels, channels // offset_groups, kernel, kernel))
            with torch.no_grad():  # start as the plain one-point warp: identity at the centre tap
                eye = torch.eye(channels // offset_groups).repeat(offset_groups, 1)
                self.sample_weight[:, :, kernel // 2, kernel // 2] = eye
            self.sample_bias = nn.Parameter(torch.zeros(channels))

    def forward(self, lif, key_lif, flows, flow_errs):
        b, t, c, h, w = key_lif.shape
        keys = key_lif.reshape(b * t, c, h, w)  # (B*T, C, h, w)
        flow = resize_flow(flows.reshape(b * t, 2, *flows.shape[-2:]), (h, w))
        err = flow_errs.reshape(b * t, 1, *flow_errs.shape[-2:])
        if err.shape[-2:] != (h, w):
            err = F.interpolate(err, size=(h, w), mode="bilinear", align_corners=True)
        warped = flow_warp(keys, flow)  # (B*T, C, h, w)
        if self.kernel > 1:
            target = lif.unsqueeze(1).expand(b, t, c, h, w).reshape(b * t, c, h, w)
            warped = self._deformable_sample(keys, warped, flow, err, target)

        q, v = self._query_value(warped, err, lif, b, t)
        return lif + (torch.softmax(q, dim=1) * v).sum(dim=1)

    def _query_value(self, warped, err, lif, b, t):
        """q = conv(q)[warped, err, target], v = conv(v)[warped, err]: each (B, T, C, h, w).

        Computed by parts rather than on the concatenation: the target's share of q is the
        same for every keyframe (computed once, not T times), the flow error is one channel
        (a broadcast multiply), and q and v share one pass over the warped features.
        """
        c, h, w = lif.shape[1:]
        wq, wv = self.q.weight[:, :, 0, 0], self.v.weight[:, :, 0, 0]  # (C, 2C+1), (C, C+1)
        both = F.conv2d(warped, torch.cat((wq[:, :c], wv[:, :c]))[:, :, None, None])  # (B*T, 2C, h, w)
        both = both.reshape(b, t, 2 * c, h, w)
        err = err.reshape(b, t, 1, h, w)
        target_q = F.conv2d(lif, wq[:, c + 1:, None, None], self.q.bias).unsqueeze(1)  # (B, 1, C, h, w)
        q = both[:, :, :c] + err * wq[:, c].reshape(1, 1, c, 1, 1) + target_q
        v = both[:, :, c:] + err * wv[:, c].reshape(1, 1, c, 1, 1) + self.v.bias.reshape(1, 1, c, 1, 1)
        return q, v

    def _deformable_sample(self, keys, warped, flow, err, target):
        k2, g = self.kernel * self.kernel, self.offset_groups
        n, _, h, w = keys.shape
        control = self.control(torch.cat((warped, err, target), dim=1))  # (N, 3*G*K2, h, w)
        residual, modulation = control[:, : 2 * g * k2], control[:, 2 * g * k2:]
        # The flow as (dy, dx) for every group and kernel point: (N, G*K2*2, h, w).
        base = torch.stack((flow[:, 1], flow[:, 0]), dim=1).repeat(1, g * k2, 1, 1)
        # Modulation starts near 1 at the centre tap, so the untrained layer is the plain warp.
        return deform_conv2d(keys, base + residual, self.sample_weight, self.sample_bias,
                             mask=2.0 * torch.sigmoid(modulation), padding=self.kernel // 2,
                             groups=g, offset_groups=g)
