"""deform_conv2d == ONNX DeformConv (opset 19) as onnxruntime runs it, so the export is one node per op."""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="dev extra 'onnx' provides it; CI installs it")
ort = pytest.importorskip("onnxruntime", reason="dev extra provides onnxruntime(-gpu); CI installs it")
from onnx import TensorProto, helper  # noqa: E402

from keyprop.core.ops import deform_conv2d  # noqa: E402


def run_onnx_deform_conv(x, weight, offset, bias, mask, stride, pad, dil, groups, ogroups):
    kh, kw = weight.shape[2:]
    node = helper.make_node("DeformConv", ["X", "W", "offset", "B", "mask"], ["Y"], kernel_shape=[kh, kw],
                            strides=list(stride), pads=[pad[0], pad[1], pad[0], pad[1]], dilations=list(dil),
                            group=groups, offset_group=ogroups)
    inputs = {"X": x, "W": weight, "offset": offset, "B": bias, "mask": mask}
    graph = helper.make_graph(
        [node], "deform", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


@pytest.mark.parametrize("kernel,stride,pad,dil,groups,ogroups", [
    (3, (1, 1), (1, 1), (1, 1), 1, 1),
    (3, (2, 1), (1, 0), (1, 2), 2, 2),
    (1, (1, 1), (0, 0), (1, 1), 8, 1),   # the flow warp: depthwise 1x1
])
def test_matches_onnxruntime_deformconv(kernel, stride, pad, dil, groups, ogroups):
    torch.manual_seed(1)
    cin, cout, h, w = 8, 8 if groups == 8 else 6, 9, 11
    x = torch.randn(2, cin, h, w)
    weight = torch.randn(cout, cin // groups, kernel, kernel)
    bias = torch.randn(cout)
    hout = (h + 2 * pad[0] - dil[0] * (kernel - 1) - 1) // stride[0] + 1
    wout = (w + 2 * pad[1] - dil[1] * (kernel - 1) - 1) // stride[1] + 1
    offset = torch.randn(2, 2 * ogroups * kernel * kernel, hout, wout) * 3  # some points leave the image
    mask = torch.rand(2, ogroups * kernel * kernel, hout, wout)
    want = run_onnx_deform_conv(x, weight, offset, bias, mask, stride, pad, dil, groups, ogroups)
    got = deform_conv2d(x, offset, weight, bias, mask, stride, pad, dil, groups, ogroups).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
