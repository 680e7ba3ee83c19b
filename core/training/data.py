"""From examples to the network's tensors, and the stream of training batches.

The network sees what inference will give it (core/model/network.py's conventions):

- ``input`` (4, H, W): target RGB times (1 - mask), then the mask (1 = hole). For a
  ``context_base`` model (``prefill=True``) every frame's hole is filled from its
  surroundings instead (:func:`keyprop.core.model.context.prefill`), as the engines do.
- ``srcs`` (T, 4, H, W): each reference the same way (its mask is usually all zero).
- ``flows`` (T, 2, H, W): target -> reference flow from :func:`keyprop.core.flow.flow`
  (OpenCV DIS on the 8-bit frames, completed inside the hole, exactly as the shot pipeline
  computes it), pixels, channel 0 = x.
- ``flow_errs`` (T, 1, H, W): its forward-backward consistency error, as flow() returns it.

Flow is computed on the *plate* (foreign content inside the hole, as a real plate shows
the object being removed), never on the ground truth, so no information leaks into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch

from .. import flow as flowlib
from ..model import context
from .sources import PictureBank
from .synth import SynthSettings, make_example

__all__ = ["network_arrays", "collate", "ExampleStream", "example_seed"]


def network_arrays(example: Dict[str, np.ndarray], prefill: bool = False) -> Dict[str, np.ndarray]:
    """The network's inputs (channels first) and the ground truth for one example
    (``prefill``: for a context_base model, holes filled as the engines fill them)."""
    frame = context.prefill if prefill else (lambda a: a)   # a new frame each: no memo needed
    target, mask = example["target"], example["mask"]
    t = len(example["refs"])
    srcs, flows, errs = [], [], []
    for i in range(t):
        ref, ref_mask, ref_plate = example["refs"][i], example["ref_masks"][i], example["ref_plates"][i]
        if np.array_equal(ref_mask, mask) and np.array_equal(ref_plate, example["plate"]):
            # The target is its own source (single-image inpainting): the pipeline passes zero
            # flow and zero error then, without running DIS.
            f, e = np.zeros(mask.shape + (2,), np.float32), np.zeros(mask.shape, np.float32)
        else:
            key_mask = ref_mask if ref_mask.any() else None
            f, e = flowlib.flow(example["plate"], ref_plate, target_mask=mask, key_mask=key_mask)
        srcs.append(frame(np.concatenate([(ref * (1 - ref_mask[:, :, None])).transpose(2, 0, 1),
                                          ref_mask[None]]).astype(np.float32)))
        flows.append(f.transpose(2, 0, 1))
        errs.append(e[None])
    hole = mask[None]
    return dict(
        input=frame(np.concatenate([(target * (1 - mask[:, :, None])).transpose(2, 0, 1), hole]).astype(np.float32)),
        srcs=np.stack(srcs).astype(np.float32),
        flows=np.stack(flows).astype(np.float32),
        flow_errs=np.stack(errs).astype(np.float32),
        target=target.transpose(2, 0, 1).astype(np.float32),
        mask=hole.astype(np.float32),
    )


def collate(items: Sequence[Dict[str, np.ndarray]]) -> Dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def example_seed(seed: int, index: int) -> np.random.Generator:
    """The random stream of example ``index``: the data depend on (seed, index) only, so a
    resumed run sees exactly the examples an uninterrupted one would."""
    return np.random.default_rng([int(seed), int(index)])


@dataclass
class ExampleStream:
    """Batches of examples ``batch * step ...`` for a given step (deterministic)."""

    bank: PictureBank
    size: int
    n_refs: int
    batch: int
    seed: int = 0
    settings: SynthSettings = SynthSettings()
    prefill: bool = False          # the model is context_base: holes arrive prefilled

    def example(self, index: int) -> Dict[str, np.ndarray]:
        return network_arrays(make_example(self.bank, example_seed(self.seed, index), self.size, self.n_refs,
                                           self.settings), self.prefill)

    def batch_at(self, step: int) -> Dict[str, torch.Tensor]:
        return collate([self.example(step * self.batch + i) for i in range(self.batch)])

    def fixed_set(self, count: int, offset: int = 10 ** 9) -> List[Dict[str, torch.Tensor]]:
        """``count`` examples from indices no training step reaches (validation)."""
        return [collate([self.example(offset + i)]) for i in range(count)]
