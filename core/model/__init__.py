"""The two-stream keyframe propagation network.

``create_model(name, checkpoint=None)`` builds a preset ('paper', 'small', 'test');
``load_reference(config, state_dict)`` builds the authors' generator from their
constructor arguments and weights; ``load_authors_checkpoint(path)`` reads their
Lightning checkpoints.
"""
from .config import NetConfig, Provenance
from .network import KeyframeCache, KeyPropNet
from .presets import (count_parameters, create_model, get_config, list_presets, load_checkpoint,
                      save_checkpoint)
from .reference import (from_reference_key, load_authors_checkpoint, load_reference, read_lightning_checkpoint,
                        state_dict_from_reference, state_dict_to_reference, to_reference_key)

__all__ = [
    "NetConfig", "Provenance", "KeyframeCache", "KeyPropNet", "count_parameters", "create_model", "get_config",
    "list_presets", "load_checkpoint", "save_checkpoint", "from_reference_key", "load_authors_checkpoint",
    "load_reference", "read_lightning_checkpoint", "state_dict_from_reference", "state_dict_to_reference",
    "to_reference_key",
]

from .inference import fold_batchnorm, prepare_for_inference  # noqa: E402

__all__ += ["fold_batchnorm", "prepare_for_inference"]
