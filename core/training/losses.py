"""Training losses: L1 on the hole and the known region, multi-scale gradients, SSIM, and an
optional adversarial term (patch discriminator, non-saturating loss, R1 penalty on real
images, as LaMa trains). Nothing here needs downloaded weights.

Tensors are (B, 3, H, W) in [0, 1]; masks (B, 1, H, W) with 1 = hole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossWeights", "masked_l1", "gradient_loss", "ssim", "PatchDiscriminator", "r1_penalty",
           "generator_losses"]


@dataclass
class LossWeights:
    hole: float = 1.0          # L1 inside the hole: the fill itself
    known: float = 0.3         # L1 outside: keeps the network an autoencoder of what it sees
    gradient: float = 0.5      # multi-scale image-gradient L1 (sharpness; weighted to the hole)
    ssim: float = 0.2          # 1 - SSIM, hole-weighted
    adversarial: float = 0.0   # patch GAN (0 = off; slow on CPU, useful on long GPU runs)
    r1: float = 1.0            # R1 penalty weight for the discriminator
    gradient_scales: int = 3


def masked_l1(pred, target, weight):
    """Mean |pred - target| weighted per pixel by ``weight`` (B, 1, H, W)."""
    return ((pred - target).abs() * weight).sum() / (weight.sum() * pred.shape[1]).clamp_min(1.0)


def _grads(x):
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_loss(pred, target, weight, scales: int = 3):
    """L1 between image gradients at ``scales`` octaves, each weighted by ``weight`` (pooled)."""
    total = pred.new_zeros(())
    for s in range(scales):
        if s:
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
            weight = F.avg_pool2d(weight, 2)
        (px, py), (tx, ty) = _grads(pred), _grads(target)
        total = total + masked_l1(px, tx, weight[..., :, 1:]) + masked_l1(py, ty, weight[..., 1:, :])
    return total / scales


def _gauss_window(channels, device, dtype, size=11, sigma=1.5):
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred, target, window: int = 11):
    """SSIM map (B, 1, H, W) (channel mean), Gaussian window, reflect padding."""
    c = pred.shape[1]
    w = _gauss_window(c, pred.device, pred.dtype, window)
    pad = window // 2
    blur = lambda x: F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), w, groups=c)  # noqa: E731
    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p ** 2
    var_t = blur(target * target) - mu_t ** 2
    cov = blur(pred * target) - mu_p * mu_t
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return s.mean(dim=1, keepdim=True)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: RGB + mask -> a map of real/fake logits (one per ~32 px patch)."""

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        mods, c_in = [], 4
        for i in range(layers):
            c_out = width * 2 ** i
            mods += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        mods += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, image, mask):
        return self.net(torch.cat([image, mask], dim=1))


def r1_penalty(logits, real):
    """R1 (Mescheder et al. 2018): squared gradient norm of D at real images."""
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def generator_losses(pred, target, mask, w: LossWeights, disc: nn.Module = None) -> Dict[str, torch.Tensor]:
    """Weighted loss terms for the network's output; 'total' is their sum."""
    known = 1.0 - mask
    # Gradients and SSIM are weighted to the hole but see a little of the known region, where
    # the fill must join the plate without a seam.
    soft = mask + 0.1 * known
    terms = {
        "hole": w.hole * masked_l1(pred, target, mask) if w.hole else None,
        "known": w.known * masked_l1(pred, target, known) if w.known else None,
        "gradient": w.gradient * gradient_loss(pred, target, soft, w.gradient_scales) if w.gradient else None,
        "ssim": w.ssim * ((1 - ssim(pred, target)) * soft).sum() / soft.sum().clamp_min(1.0) if w.ssim else None,
    }
    if w.adversarial and disc is not None:
        composite = pred * mask + target * known
        terms["adversarial"] = w.adversarial * F.softplus(-disc(composite, mask)).mean()
    terms = {k: v for k, v in terms.items() if v is not None}
    terms["total"] = sum(terms.values())
    return terms
