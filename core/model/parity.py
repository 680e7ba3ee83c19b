"""Check the paper preset against the published generator's outputs (reference parity fixtures).

Each case is ``NAME.json`` (the authors' generator config and state-dict key list) plus
``NAME.npz`` (inputs and the published generator's output and logits). Weights are not
stored: every tensor is a deterministic function of its key and shape (:func:`fixture_weight`),
the rule the fixtures were made with.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
import torch

from .reference import load_reference

OUTPUT_TOLERANCE = 1e-4
LOGITS_TOLERANCE = 1e-3


def fixture_weight(key: str, shape) -> np.ndarray:
    """The fixtures' weight rule: a seeded generator per key (crc32 of the key name)."""
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


def fixture_state_dict(key_shapes: Iterable) -> Dict[str, torch.Tensor]:
    """[key, shape, dtype] rows -> the authors' state dict."""
    return {row[0]: torch.from_numpy(np.asarray(fixture_weight(row[0], tuple(row[1])))) for row in key_shapes}


@dataclass
class ParityResult:
    case: str
    output_error: float
    logits_error: float

    @property
    def ok(self) -> bool:
        return self.output_error <= OUTPUT_TOLERANCE and self.logits_error <= LOGITS_TOLERANCE


def check_case(json_path: Path) -> ParityResult:
    meta = json.loads(Path(json_path).read_text())
    arrays = {k: torch.from_numpy(v) for k, v in np.load(Path(json_path).with_suffix(".npz")).items()}
    model = load_reference(meta["config"], fixture_state_dict(meta["state_dict"]))
    with torch.inference_mode():
        out, logits = model(arrays["input"], arrays["srcs"], arrays["flows"], arrays["flow_errs"],
                            return_logits=True)
    return ParityResult(Path(json_path).stem, (out - arrays["output"]).abs().max().item(),
                        (logits - arrays["logits"]).abs().max().item())


def default_fixture_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference_parity"


def check_dir(directory: Path) -> List[ParityResult]:
    cases = sorted(Path(directory).glob("*.json"))
    if not cases:
        raise FileNotFoundError(f"{directory}: no parity cases (*.json + *.npz)")
    return [check_case(p) for p in cases]
