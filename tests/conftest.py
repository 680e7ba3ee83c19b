import json
from pathlib import Path

import numpy as np
import pytest
import torch

from keyprop.core.model.parity import fixture_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
PARITY_CASES = sorted(p.stem for p in (FIXTURES / "reference_parity").glob("*.npz"))


def reference_state_dict(key_shapes):
    """The authors' state dict made by the fixtures' weight rule (see fixtures/reference_parity/README.md)."""
    return fixture_state_dict(key_shapes)


def load_parity_case(name):
    meta = json.loads((FIXTURES / "reference_parity" / f"{name}.json").read_text())
    arrays = dict(np.load(FIXTURES / "reference_parity" / f"{name}.npz"))
    return meta, {k: torch.from_numpy(v) for k, v in arrays.items()}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
