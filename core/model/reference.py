"""The authors' format: key names, generator configs, and their Lightning checkpoints.

Source format (runwayml/guided-inpainting): ``GIResNetGenerator`` is one ``nn.Sequential``
named ``model`` plus ``deformable_writes``. With ``n_downsampling = d``, ``pre_lama = p``,
``n_blocks = n`` and ``post_lama = q`` its indices are::

    model.0            ReflectionPad2d(3)                       (no weights)
    model.1            7x7 stem conv/norm                       -> encoder.stem
    model.2 .. 1+d     strided convs                            -> encoder.down.{i}
    model.2+d ..       p FFC blocks                             -> encoder.pre_blocks.{i}
    model.2+d+p        latent init (latents, project)           -> latent_init
    model.3+d+p ..     n GI blocks                              -> blocks.{i}
        .read / .attn1 / .attn2 / .block1 / .block2 / .write
        -> .latent_read / .latent_attn_cross / .latent_attn_self / .lif_block1 / .lif_block2 / .latent_write
        .attn1.attn.{layernorm1,query,key,value} -> .latent_attn_cross.{layernorm1,query,key,value}
    model.3+d+p+n      DropLatentLayer                          (no weights)
    model.4+d+p+n ..   q FFC blocks                             -> decoder.post_blocks.{i}
    then d x (ConvTranspose2d, BatchNorm2d, ReLU)               -> decoder.up.{j}.{deconv,norm}
    then ReflectionPad2d(3), Conv2d(ngf, out, 7)                -> decoder.to_rgb
    deformable_writes.{i}.{q,v}                                 -> blocks.{i}.keyframe_warp.{q,v}

A Lightning checkpoint (``.ckpt``) of theirs is a dict whose ``state_dict`` holds the
generator under the prefix ``generator.``, beside ``discriminator.*``, loss networks and
RAFT (``flow.raft.*``); ``hyper_parameters`` holds the training config as OmegaConf
objects. We read it without importing or executing anything from the file.
"""
from __future__ import annotations

import logging
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .config import NetConfig, Provenance
from .network import KeyPropNet

log = logging.getLogger(__name__)

# The generator section of the authors' configs/ours.yaml (the published model; the paper preset).
PAPER_REFERENCE_CONFIG = dict(
    is_deformable=True, n_cross=2, is_crossattending=True, num_latents_sqrt=16, num_groups=4,
    read_write_heads=8, pre_lama=0, post_lama=0, input_nc=4, output_nc=3, ngf=64, n_downsampling=3,
    n_blocks=4, block_type="ffc", add_out_act="sigmoid",
    resnet_conv_kwargs=dict(ratio_gin=0.75, ratio_gout=0.75, enable_lfu=False),
)

_ATTN_INNER = re.compile(r"^(attn[12])\.attn\.")


def _prefix_table(cfg: NetConfig) -> List[Tuple[str, str]]:
    """(our prefix, their prefix) pairs, longest-first where they could overlap."""
    d, p, n, q = cfg.n_downsampling, cfg.pre_blocks, cfg.n_blocks, cfg.post_blocks
    table = [("encoder.stem.", "model.1.")]
    table += [(f"encoder.down.{i}.", f"model.{2 + i}.") for i in range(d)]
    table += [(f"encoder.pre_blocks.{i}.", f"model.{2 + d + i}.") for i in range(p)]
    table += [("latent_init.", f"model.{2 + d + p}.")]
    first_block = 3 + d + p
    table += [(f"blocks.{i}.keyframe_warp.", f"deformable_writes.{i}.") for i in range(n)]
    table += [(f"blocks.{i}.", f"model.{first_block + i}.") for i in range(n)]
    first_post = first_block + n + 1
    table += [(f"decoder.post_blocks.{i}.", f"model.{first_post + i}.") for i in range(q)]
    first_up = first_post + q
    for j in range(d):
        table += [(f"decoder.up.{j}.deconv.", f"model.{first_up + 3 * j}."),
                  (f"decoder.up.{j}.norm.", f"model.{first_up + 3 * j + 1}.")]
    table += [("decoder.to_rgb.", f"model.{first_up + 3 * d + 1}.")]
    return table


_BLOCK_PARTS = [("latent_read.", "read."), ("latent_write.", "write."), ("latent_attn_cross.", "attn1."),
                ("latent_attn_self.", "attn2."), ("lif_block1.", "block1."), ("lif_block2.", "block2.")]
_ATTN_LEAVES = ("layernorm1.", "query.", "key.", "value.")


def to_reference_key(key: str, cfg: NetConfig) -> str:
    """Our state-dict key -> the authors' key (KeyError if it has no counterpart)."""
    for ours, theirs in _prefix_table(cfg):
        if key.startswith(ours):
            rest = key[len(ours):]
            if ours.startswith("blocks.") and not ours.endswith("keyframe_warp."):
                for mine, authors in _BLOCK_PARTS:
                    if rest.startswith(mine):
                        rest = authors + rest[len(mine):]
                        break
                m = re.match(r"^(attn[12])\.(.*)$", rest)
                if m and m.group(2).startswith(_ATTN_LEAVES):
                    rest = f"{m.group(1)}.attn.{m.group(2)}"
            return theirs + rest
    raise KeyError(f"no authors' key for {key!r}")


def from_reference_key(key: str, cfg: NetConfig) -> str:
    """The authors' key -> our state-dict key (KeyError if it has no counterpart)."""
    best = None
    for ours, theirs in _prefix_table(cfg):
        if key.startswith(theirs) and (best is None or len(theirs) > len(best[1])):
            best = (ours, theirs)
    if best is None:
        raise KeyError(f"no keyprop key for the authors' {key!r}")
    ours, theirs = best
    rest = key[len(theirs):]
    if ours.startswith("blocks.") and not ours.endswith("keyframe_warp."):
        rest = _ATTN_INNER.sub(r"\1.", rest)
        for mine, authors in _BLOCK_PARTS:
            if rest.startswith(authors):
                rest = mine + rest[len(authors):]
                break
    return ours + rest


def state_dict_to_reference(state_dict: Mapping[str, torch.Tensor], cfg: NetConfig) -> Dict[str, torch.Tensor]:
    """Our state dict -> one with the authors' key names (same tensors)."""
    return {to_reference_key(k, cfg): v for k, v in state_dict.items()}


def state_dict_from_reference(state_dict: Mapping[str, torch.Tensor], cfg: NetConfig) -> Dict[str, torch.Tensor]:
    """The authors' generator state dict -> ours. Accepts the ``generator.`` prefix too."""
    if any(k.startswith("generator.") for k in state_dict):
        state_dict = {k[len("generator."):]: v for k, v in state_dict.items() if k.startswith("generator.")}
    return {from_reference_key(k, cfg): v for k, v in state_dict.items()}


def load_reference(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> KeyPropNet:
    """Build the authors' generator from its constructor arguments and load their weights.

    Args:
        config: ``GIResNetGenerator`` keyword arguments with the authors' names (e.g. the
            ``generator`` section of configs/ours.yaml; ``kind`` is ignored).
        state_dict: the generator's state dict with the authors' key names (``model.1.conv.weight``,
            ``deformable_writes.0.q.weight``, ...), optionally prefixed ``generator.``.

    Returns:
        A :class:`KeyPropNet` in eval mode whose ``forward(input, srcs, flows, flow_errs)``
        computes what the authors' generator computes (``return_logits=True`` adds the
        pre-activation output). Every tensor's key and shape is checked; a missing or
        unexpected key raises ValueError naming it.
    """
    cfg = NetConfig.from_reference(config)
    model = KeyPropNet(cfg)
    ours = state_dict_from_reference(state_dict, cfg)
    load_strict(model, ours, what="authors' generator state dict")
    return model.eval()


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict that reports missing/unexpected keys and shape mismatches by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: {len(missing)} missing keys (first: {missing[:3]}), "
                         f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{what}: {key} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(state_dict, strict=True)


# --- Lightning checkpoints ------------------------------------------------------------------

class _Inert:
    """Stands in for any class the checkpoint names that we do not allow: holds its state."""

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args, **kwargs):  # some pickles call what they rebuilt
        return _Inert(*args, **kwargs)


def _inert_class(module: str, name: str):
    return type(name, (_Inert,), {"__module__": f"keyprop.inert.{module}", "_origin": f"{module}.{name}"})


_ALLOWED = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch", "device"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "bytearray"), ("builtins", "object"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _inert_class(module, name)


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` that never imports classes from the file."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "keyprop_restricted_pickle"


def _plain(obj: Any, depth: int = 0) -> Any:
    """Turn OmegaConf-like inert objects (``_content`` / ``_val``) into plain dicts/lists/values."""
    if depth > 64:
        return None
    if isinstance(obj, _Inert):
        state = getattr(obj, "_state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            if "_content" in state:
                return _plain(state["_content"], depth + 1)
            if "_val" in state:
                return _plain(state["_val"], depth + 1)
        return None
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    return obj


def _find_generator_config(obj: Any) -> Optional[Dict[str, Any]]:
    """Depth-first search for a dict under a key ``generator`` that looks like GIResNetGenerator args."""
    if isinstance(obj, dict):
        gen = obj.get("generator")
        if isinstance(gen, dict) and ("n_blocks" in gen or "input_nc" in gen):
            return gen
        for value in obj.values():
            found = _find_generator_config(value)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = _find_generator_config(value)
            if found is not None:
                return found
    return None


def _resolve_interpolations(gen: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve ``${...generator.a.b}`` strings against the generator config itself."""
    def lookup(path: str):
        node: Any = gen
        for part in path.split("."):
            node = node[part]
        return node

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, str):
            m = re.fullmatch(r"\$\{.*?generator\.(.+)\}", node)
            if m:
                try:
                    return walk(lookup(m.group(1)))
                except (KeyError, TypeError):
                    return node
        return node

    return walk(gen)


def read_lightning_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """Read the generator weights (authors' key names) and, if present, its config from a .ckpt.

    Tries ``torch.load(weights_only=True)`` first; checkpoints whose ``hyper_parameters``
    hold OmegaConf objects are then read with a restricted unpickler that turns every
    class it does not know into an inert placeholder: nothing from the file is imported
    or executed.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        log.info("%s: not loadable with weights_only (foreign classes); using the restricted reader", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint dictionary")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is not a dictionary")
    generator = {k[len("generator."):]: v for k, v in state.items()
                 if isinstance(k, str) and k.startswith("generator.") and torch.is_tensor(v)}
    if not generator:
        generator = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(("model.", "deformable_writes."))
                     and torch.is_tensor(v)}
    if not generator:
        raise ValueError(f"{path}: no generator weights (keys 'generator.*') in the checkpoint")
    config = None
    if "hyper_parameters" in ckpt:
        config = _find_generator_config(_plain(ckpt["hyper_parameters"]))
        if config is not None:
            config = _resolve_interpolations(config)
    return generator, config


def load_authors_checkpoint(path, config: Optional[Mapping[str, Any]] = None) -> KeyPropNet:
    """Load one of the authors' Lightning checkpoints as a KeyPropNet (eval mode).

    ``config`` (their generator arguments) overrides the one stored in the checkpoint;
    without either, the config of configs/ours.yaml (the paper preset) is assumed.
    """
    generator, stored = read_lightning_checkpoint(path)
    if config is None:
        config = stored
    if config is None:
        log.warning("%s: no generator config stored; assuming the paper's (configs/ours.yaml)", path)
        config = PAPER_REFERENCE_CONFIG
    model = load_reference(config, generator)
    model.provenance = Provenance(origin="authors-checkpoint", licence="see the authors' release",
                                  notes=str(path))
    return model
