"""ONNX export of the paper preset reproduces the published generator's outputs (reference parity fixtures).

Both graphs together: the keyframe encoder once per keyframe, its outputs joined along T,
then the target filler. fp32 must stay within the fixtures' tolerance (1e-4 max abs). The fp16 export is tested
on the `test` preset (test_export.py); its error on these cases is in docs/onnx.md.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from keyprop.core.model import load_reference
from keyprop.export.exporter import ENCODER, FILLER, export_graph
from keyprop.export.graphs import cache_names, join_caches

from conftest import PARITY_CASES, load_parity_case, reference_state_dict


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_pair(encoder_path, filler_path, names, arrays):
    encoder, filler = session(encoder_path), session(filler_path)
    srcs = arrays["srcs"].numpy()
    per_key = [encoder.run(None, {"frame": srcs[:, i]}) for i in range(srcs.shape[1])]
    feeds = {"target": arrays["input"].numpy(), "flows": arrays["flows"].numpy(),
             "flow_errs": arrays["flow_errs"].numpy()}
    feeds.update(zip(names, join_caches(names, per_key)))
    return filler.run(None, feeds)[0]


@pytest.mark.parametrize("case", PARITY_CASES)
def test_paper_fixture_parity_fp32(case, tmp_path):
    meta, arrays = load_parity_case(case)
    model = load_reference(meta["config"], reference_state_dict(meta["state_dict"]))
    size = tuple(arrays["input"].shape[-2:])
    paths = {kind: export_graph(model, kind, size, tmp_path / f"{kind}.onnx") for kind in (ENCODER, FILLER)}
    graph = onnx.load(paths[FILLER], load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    # One DeformConv per keyframe warp (n_cross blocks), FFTs as DFT, nothing decomposed.
    assert ops.count("DeformConv") == min(model.cfg.n_cross, model.cfg.n_blocks)
    assert "DFT" in ops and "GridSample" not in ops
    out = run_pair(paths[ENCODER], paths[FILLER], cache_names(model), arrays)
    error = np.abs(out - arrays["output"].numpy()).max()
    assert error <= 1e-4, f"{case}: ONNX fp32 vs published output {error:.2e}"

