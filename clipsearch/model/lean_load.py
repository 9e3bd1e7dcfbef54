"""Loading one tower of an open_clip model straight from its safetensors file, in the run's precision.

open_clip's `create_model` builds the whole model with random initial weights (both towers), loads
the whole checkpoint in fp32, and only then does the Embedder cast it: an indexing run paid for a
text tower it never runs, an initialisation it throws away and an fp32 copy of a bf16 model
(docs/benchmarks.md, "Fixed costs"). Here the model is built by open_clip itself from the same
config, but on the meta device (no memory, no initialisation), so its structure and preprocessing
settings are exactly what `create_model` makes; then the tensors of one tower are read from the
memory-mapped file one at a time, cast, and assigned in place (`load_state_dict(assign=True)`).
The other tower stays on the meta device until something needs it (`materialise`).

Only a plain open_clip checkpoint qualifies: a .safetensors file whose keys are exactly the model's
(no renaming, no position-embedding resize). Anything else returns None and the Embedder takes
open_clip's own loading path, so no model loads differently from open_clip's result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.model.vit_config import read_header

if TYPE_CHECKING:
    import torch

IMAGE = "image"
TEXT = "text"
# Scalars every use needs (the softmax temperature that relevance.py reads; SigLIP's bias).
_SHARED = ("logit_scale", "logit_bias")


def tower_of(key: str) -> str:
    """Which tower a state-dict key belongs to: the image tower is `visual.*`, the rest is text."""
    if key.startswith("visual."):
        return IMAGE
    return "shared" if key in _SHARED else TEXT


def skeleton(create: Callable[[], Any]) -> Any:
    """The model `create()` (an open_clip.create_model call with load_weights=False, device="meta")
    makes, built on the meta device: parameters with shapes and no storage."""
    import logging

    import torch

    # open_clip logs a warning that the model is "initialized randomly": true of the skeleton, not
    # of the model the user gets, and it would land in the user's terminal.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with torch.device("meta"):
            return create()
    finally:
        logging.disable(previous)


def _safetensor_keys(weights: Path) -> list[str] | None:
    if weights.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return list(f.keys())


def eligible(model: Any, weights: Path) -> bool:
    """True when the file's keys and shapes are exactly the skeleton's state dict (see module doc)."""
    keys = _safetensor_keys(weights)
    if keys is None:
        return False
    expected = model.state_dict()
    if set(keys) != set(expected):
        return False
    # Buffers outside the state dict other than the causal mask that materialise rebuilds (a Hugging
    # Face tower's position ids) would stay on the meta device: only open_clip's own loading fills them.
    if any(name not in expected and name.rsplit(".", 1)[-1] != "attn_mask" for name, _ in model.named_buffers()):
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return all(list(f.get_slice(k).get_shape()) == list(expected[k].shape) for k in keys)


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read(weights: Path, towers: tuple[str, ...], dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of `towers` (plus the shared scalars), each cast to `dtype` as it is read.

    One tensor at a time, with plain reads rather than safetensors' memory map: a mapped file's
    pages count in the process's resident memory for as long as they stay cached, so mapping
    ViT-B-32 added its fp32 image tower (350 MB) to a bf16 run's peak beside the cast copy.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    header, base = read_header(weights)
    with weights.open("rb") as f:
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if tower_of(key) != "shared" and tower_of(key) not in towers:
                continue
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            raw = bytearray(f.read(end - begin))
            kind = getattr(torch, _DTYPES[info["dtype"]])
            t = (torch.frombuffer(raw, dtype=kind) if raw else torch.empty(0, dtype=kind)).reshape(info["shape"])
            # Floating tensors take the run's precision, as model.to(dtype) would cast them.
            out[key] = (t.to(dtype) if t.is_floating_point() else t).to(device)
    return out


def materialise(model: Any, weights: Path, towers: tuple[str, ...], dtype: torch.dtype, device: str) -> None:
    """Give the skeleton real tensors for `towers`; the text tower's causal mask (a buffer the file
    does not hold) is rebuilt as open_clip builds it."""
    import torch

    state = read(weights, towers, dtype, device)
    model.load_state_dict(state, strict=False, assign=True)
    if TEXT in towers and getattr(model, "attn_mask", None) is not None:
        n = int(model.context_length)
        mask = torch.empty(n, n, device=device).fill_(float("-inf")).triu_(1)  # open_clip's build_causal_mask
        model.attn_mask = mask.to(dtype)
    wanted = [m for name, m in _tower_modules(model) if name in towers]
    if any(t.is_meta for m in wanted for t in [*m.parameters(), *m.buffers()]):
        raise ValueError("some of the model's tensors are not in its weights file")


def loaded_towers(model: Any) -> set[str]:
    """The towers whose tensors are real (not on the meta device)."""
    return {name for name, m in _tower_modules(model)
            if not any(t.is_meta for t in [*m.parameters(), *m.buffers()])}


def _tower_modules(model: Any) -> list[tuple[str, Any]]:
    """Each tower as a list of modules: `visual` for the image tower; the text tower is spread over
    the model's own attributes (transformer, token_embedding, ...) or sits in `text`."""
    import torch

    text = torch.nn.ModuleList([m for name, m in model.named_children() if name != "visual"])
    # The model's own parameters (positional_embedding, text_projection, logit_scale) count as text.
    holder = torch.nn.Module()
    for name, p in model.named_parameters(recurse=False):
        if name not in _SHARED:
            holder.register_parameter(name, p)
    if getattr(model, "attn_mask", None) is not None:
        holder.register_buffer("attn_mask", model.attn_mask, persistent=False)
    text.append(holder)
    return [(IMAGE, model.visual), (TEXT, text)]
