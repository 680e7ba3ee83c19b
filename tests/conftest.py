import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY_CASES = sorted(p.stem for p in (FIXTURES / "reference_parity").glob("*.npz"))


def reference_weight(key, shape):
    """The rule of fixtures/reference_parity/README.md: every tensor from its key and shape."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    if key.endswith("running_mean"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("running_var"):
        return (1.0 + 0.5 * rng.random(shape)).astype(np.float32)
    if len(shape) == 1 and key.endswith("weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith("bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def reference_state_dict(key_shapes):
    return {k: torch.from_numpy(np.asarray(reference_weight(k, tuple(s)))) for k, s, *_ in key_shapes}


def load_parity_case(name):
    meta = json.loads((FIXTURES / "reference_parity" / f"{name}.json").read_text())
    arrays = dict(np.load(FIXTURES / "reference_parity" / f"{name}.npz"))
    return meta, {k: torch.from_numpy(v) for k, v in arrays.items()}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
