"""deform_conv2d: against a direct per-pixel loop, gradcheck, module == function, the warp."""
import math

import pytest
import torch
import torch.nn.functional as F

from keyprop.core.ops import DeformConv2d, deform_conv2d, flow_warp


def bilinear_zero_outside(img, y, x):
    """img (C, H, W) at real (y, x); each neighbour outside the image counts as zero."""
    c, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def loop_deform_conv(x, offset, mask, weight, bias, stride, pad, dil, groups, ogroups):
    """The ONNX DeformConv definition, one output pixel and kernel point at a time."""
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    hout = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wout = (w + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = torch.zeros(n, cout, hout, wout, dtype=x.dtype)
    cpo = cin // ogroups
    for b in range(n):
        for oy in range(hout):
            for ox in range(wout):
                cols = torch.zeros(cin, kh, kw, dtype=x.dtype)
                for g in range(ogroups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, 2 * (g * kh * kw + k), oy, ox].item()
                            dx = offset[b, 2 * (g * kh * kw + k) + 1, oy, ox].item()
                            m = 1.0 if mask is None else mask[b, g * kh * kw + k, oy, ox].item()
                            py = oy * stride[0] - pad[0] + i * dil[0] + dy
                            px = ox * stride[1] - pad[1] + j * dil[1] + dx
                            cols[g * cpo:(g + 1) * cpo, i, j] = m * bilinear_zero_outside(
                                x[b, g * cpo:(g + 1) * cpo], py, px)
                for co in range(cout):
                    gi = co // (cout // groups)
                    out[b, co, oy, ox] = (weight[co] * cols[gi * cin_g:(gi + 1) * cin_g]).sum()
                    if bias is not None:
                        out[b, co, oy, ox] += bias[co]
    return out


CASES = [
    # kernel, stride, pad, dil, groups, offset groups, cin, cout
    (3, (1, 1), (1, 1), (1, 1), 1, 1, 4, 6),
    (3, (2, 1), (1, 0), (1, 2), 2, 2, 4, 6),
    ((2, 3), (1, 2), (0, 1), (2, 1), 1, 4, 4, 2),
    (1, (1, 1), (0, 0), (1, 1), 4, 1, 4, 4),
]


@pytest.mark.parametrize("kernel,stride,pad,dil,groups,ogroups,cin,cout", CASES)
@pytest.mark.parametrize("with_mask", [True, False])
def test_matches_direct_loop(kernel, stride, pad, dil, groups, ogroups, cin, cout, with_mask):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(2, cin, 6, 7, dtype=torch.float64)
    weight = torch.randn(cout, cin // groups, kh, kw, dtype=torch.float64)
    bias = torch.randn(cout, dtype=torch.float64)
    hout = (6 + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wout = (7 + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    # Offsets big enough to leave the image on some points (zeros outside must hold).
    offset = torch.randn(2, 2 * ogroups * kh * kw, hout, wout, dtype=torch.float64) * 2.5
    mask = torch.rand(2, ogroups * kh * kw, hout, wout, dtype=torch.float64) if with_mask else None
    got = deform_conv2d(x, offset, weight, bias, mask, stride, pad, dil, groups, ogroups)
    want = loop_deform_conv(x, offset, mask, weight, bias, stride, pad, dil, groups, ogroups)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_zero_offset_is_plain_conv():
    x = torch.randn(1, 4, 9, 8, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 9, 8, dtype=torch.float64)
    got = deform_conv2d(x, offset, weight, None, None, 1, 1, 1, groups=2)
    torch.testing.assert_close(got, F.conv2d(x, weight, padding=1, groups=2))


def test_gradcheck_all_inputs():
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    offset = (torch.randn(1, 2 * 2 * 9, 5, 6, dtype=torch.float64) * 1.7).requires_grad_()
    mask = torch.rand(1, 2 * 9, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda *a: deform_conv2d(a[0], a[1], a[3], a[4], a[2], 1, 1, 1, 1, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias))


def test_registered_op_and_module():
    assert hasattr(torch.ops.keyprop, "deform_conv2d")
    module = DeformConv2d(4, 5, kernel_size=3, offset_groups=2)
    x = torch.randn(2, 4, 8, 8)
    offset = torch.randn(2, 36, 8, 8)
    mask = torch.rand(2, 18, 8, 8)
    want = deform_conv2d(x, offset, module.weight, module.bias, mask, 1, 1, 1, 1, 2)
    torch.testing.assert_close(module(x, offset, mask), want)


def test_export_keeps_one_node():
    class Warp(torch.nn.Module):
        def forward(self, feats, flow):
            return flow_warp(feats, flow)

    program = torch.export.export(Warp(), (torch.randn(1, 3, 8, 8), torch.randn(1, 2, 8, 8)))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("keyprop.deform_conv2d" in t for t in targets) == 1
    assert not any("grid_sampler" in t for t in targets)


def test_inference_mode_gives_the_ops_values_without_importing_dynamo():
    """Under torch.inference_mode (the engines) the op's kernel runs directly: the same values
    as through the registered op, and no torch._dynamo import (1.5-2.6 s, paid by a run's
    first network fill when the op's dispatch made it)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from keyprop.core.ops import deform_conv2d\n"
        "torch.manual_seed(0)\n"
        "x, offset, mask = torch.randn(1, 4, 9, 7), torch.randn(1, 36, 9, 7) * 2, torch.rand(1, 18, 9, 7)\n"
        "weight, bias = torch.randn(5, 4, 3, 3), torch.randn(5)\n"
        "with torch.inference_mode():\n"
        "    fast = deform_conv2d(x, offset, weight, bias, mask, 1, 1, 1, 1, 2)\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "with torch.no_grad():\n"
        "    op = deform_conv2d(x, offset, weight, bias, mask, 1, 1, 1, 1, 2)\n"
        "assert 'torch._dynamo' in sys.modules\n"   # the op's dispatch: the path the bypass avoids
        "assert torch.equal(fast, op)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_flow_warp_is_bilinear_backward_warp():
    feats = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    flow = torch.randn(2, 2, 10, 12, dtype=torch.float64) * 3
    ys, xs = torch.meshgrid(torch.arange(10.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack((2 * (xs + flow[:, 0]) / 11 - 1, 2 * (ys + flow[:, 1]) / 9 - 1), dim=-1)
    want = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(flow_warp(feats, flow), want)
    # An integer shift moves pixels exactly.
    shift = torch.zeros(2, 2, 10, 12, dtype=torch.float64)
    shift[:, 0] = 2
    torch.testing.assert_close(flow_warp(feats, shift)[..., :-2], feats[..., 2:])


def test_one_pixel_wide_input():
    x = torch.randn(1, 2, 1, 5, dtype=torch.float64)
    offset = torch.zeros(1, 2, 1, 5, dtype=torch.float64)
    offset[:, 1] = 0.5
    out = deform_conv2d(x, offset, torch.ones(2, 1, 1, 1, dtype=torch.float64), groups=2)
    want = loop_deform_conv(x, offset, None, torch.ones(2, 1, 1, 1, dtype=torch.float64), None, (1, 1), (0, 0),
                            (1, 1), 2, 1)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("bad", ["offset", "mask", "weight", "bias", "input"])
def test_bad_shapes_say_expected_and_actual(bad):
    x = torch.randn(1, 4, 6, 6)
    args = dict(input=x, offset=torch.randn(1, 18, 6, 6), weight=torch.randn(2, 4, 3, 3), bias=torch.randn(2),
                mask=torch.rand(1, 9, 6, 6))
    args[bad] = {"offset": torch.randn(1, 17, 6, 6), "mask": torch.rand(1, 8, 6, 6),
                 "weight": torch.randn(2, 3, 3, 3), "bias": torch.randn(3), "input": torch.randn(4, 6, 6)}[bad]
    with pytest.raises(ValueError, match="deform_conv2d"):
        deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"], args["mask"], padding=1)
