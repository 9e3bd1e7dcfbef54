"""A second graph of the text tower that continues from cached keys and values (torch side).

The label cache embeds every label in 8 templates ("a photo of {}.", "a picture of {}." ...): 8,000
prompts for 1,000 labels, about half of whose tokens are the templates' own. CLIP's text tower is
causal: a token's state in every layer depends only on the tokens before it, so the keys and values
of "<start> a photo of" are the same in every prompt that starts with them. This graph takes them as
an input (`past`, one template's prefix, shared by the whole batch) and runs only the rest of each
prompt (the label, ".", the end token); prefix_tower.py runs it. Exact, not an approximation: the
same products in another order (cosine 1.0 to the plain tower, checked at export).

Inputs: `embedded` (batch, length, width), the suffix tokens' embeddings from the export's token
table; `positions` (length,), their positions in the prompt; `past_bias` (past,), added to the
attention scores of the past rows (0, or -inf for a row not in use; the suffix's own tokens see
only earlier ones, through the model's causal mask); `past` (layers, 2, heads, past, head width),
each layer's keys and values of the prefix; `eot` (batch,), where each suffix's end token is.
Outputs: `features` (batch, dim), unnormalised as open_clip's encode_text, and `present`
(layers, 2, heads, length, head width), the keys and values of the first row's tokens, which is how a prefix
is computed (one row, a dummy past masked out). Where only `features` is wanted (OpenVINO's batches,
prefix_openvino.py) the runtime drops `present`. In the last layer only each row's end token is
computed past its keys and values, since only that token is pooled.

Only open_clip's standard CLIP text tower (embedder.has_standard_text_tower) with plain
ResidualAttentionBlocks (one packed in-projection, no cross-attention) qualifies; others keep the
plain graph, which stays what queries run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import text_tower

FILE = "prefix.onnx"
# 2: the prefix's keys and values by head, shared without a copy per row, the last layer for the
# end tokens alone (1: (layers, 2, past, width), broadcast to the batch, every row of every layer).
# meta.json's "graph"; prefix_tower runs either.
GRAPH = 2


def eligible(model: Any) -> bool:
    """Blocks whose attention this module can reproduce: open_clip's ResidualAttentionBlock over
    torch's MultiheadAttention with one packed in-projection and biases, batch first."""
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    from clipsearch.model.embedder import has_standard_text_tower

    if not has_standard_text_tower(model) or not getattr(model.transformer, "batch_first", True):
        return False
    for block in model.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv")
                or not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim
                or attn.in_proj_bias is None or not attn.batch_first):
            return False
    return True


def _module(model: Any) -> Any:
    import torch

    class PrefixTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embedded: torch.Tensor, positions: torch.Tensor, past_bias: torch.Tensor,
                    past: torch.Tensor, eot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.model
            blocks = list(m.transformer.resblocks)
            batch, length, _ = embedded.shape
            x = embedded + m.positional_embedding[positions]
            causal = m.attn_mask[:length, :length]
            rows = torch.arange(batch)
            present = []
            for i, block in enumerate(blocks):
                attn = block.attn
                q, k, v = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight,
                                                     attn.in_proj_bias).chunk(3, dim=-1)
                present.append(torch.stack([k[0], v[0]]).reshape(2, length, attn.num_heads, -1).transpose(1, 2))
                mask = causal
                if i == len(blocks) - 1:
                    # Only the end tokens' states are pooled, and nothing after this layer mixes
                    # rows: its queries, output projection and MLP for those rows alone (every
                    # row's keys and values still count). A twelfth of the work of a 4-token suffix.
                    q, x, mask = q[rows, eot].unsqueeze(1), x[rows, eot].unsqueeze(1), causal[eot][:, None, None]
                x = x + block.ls_1(attn.out_proj(_attend(q, k, v, past[i], past_bias, mask, attn.num_heads)))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            pooled = m.ln_final(x[:, 0])
            proj = m.text_projection
            features = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
            return features, torch.stack(present)

    return PrefixTower().eval()


def _attend(q: Any, k: Any, v: Any, past: Any, past_bias: Any, mask: Any, heads: int) -> Any:
    """Attention of q (batch, queries, width) over the prefix's keys and values `past` (2, heads,
    prefix, head width), shared by the batch, then the rows' own k and v (batch, length, width)
    under `mask`. The past is stored by head so that no product transposes its batch axes: ONNX
    Runtime fuses such a transpose into its FusedMatMul (transBatchB), which OpenVINO 2026.4 reads
    wrongly (a shape error wherever the prefix's length differs from the number of heads).

    The prefix's part is one product per head over all the batch's queries: broadcasting its keys
    to every row (the first graph's expand and concat) copied them per row and layer, and with the
    copies' layout changes it cost OpenVINO bf16 a quarter of a batch's time (docs/benchmarks.md).
    """
    import torch

    batch, queries, width = q.shape
    dim, n = width // heads, past.shape[2]
    q = q.reshape(batch, queries, heads, dim).transpose(1, 2) * (float(dim) ** -0.5)
    k = k.reshape(batch, -1, heads, dim).transpose(1, 2)
    v = v.reshape(batch, -1, heads, dim).transpose(1, 2)
    pk, pv = past[0], past[1]
    by_head = q.transpose(0, 1).reshape(heads, batch * queries, dim)
    on_past = (by_head @ pk.transpose(-1, -2)).reshape(heads, batch, queries, n).transpose(0, 1) + past_bias
    probs = torch.cat([on_past, q @ k.transpose(-1, -2) + mask], dim=-1).softmax(dim=-1)
    from_past = probs[..., :n].transpose(0, 1).reshape(heads, batch * queries, n) @ pv
    out = from_past.reshape(heads, batch, queries, dim).transpose(0, 1) + probs[..., n:] @ v
    return out.transpose(1, 2).reshape(batch, queries, width)


def write(fp32: Any, folder: Path) -> bool:
    """prefix.onnx (weights in prefix.onnx.data) in folder, from the fp32 model; False when the
    tower is not one this graph reproduces. prefix_tower.verify judges it against the plain graph."""
    import torch

    if not eligible(fp32):
        return False
    layers, width = len(fp32.transformer.resblocks), int(fp32.transformer.width)
    heads = int(fp32.transformer.resblocks[0].attn.num_heads)
    context = int(fp32.positional_embedding.shape[0])
    # Sizes above 1 everywhere (1 can be folded into the traced graph as a constant).
    batch_n, length_n, past_n = 3, 5, 4
    sample = (torch.zeros(batch_n, length_n, width), torch.arange(past_n, past_n + length_n),
              torch.zeros(past_n), torch.zeros(layers, 2, heads, past_n, width // heads),
              torch.tensor([4, 2, 3]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes would land in the user's terminal
        batch = torch.export.Dim("batch", max=4096)
        length = torch.export.Dim("length", min=1, max=context)
        past = torch.export.Dim("past", min=1, max=context)
        torch.onnx.export(_module(fp32), sample, str(folder / FILE),
                          input_names=["embedded", "positions", "past_bias", "past", "eot"],
                          output_names=["features", "present"],
                          dynamic_shapes=({0: batch, 1: length}, {0: length}, {0: past},
                                          {3: past}, {0: batch}),
                          dynamo=True, external_data=True, verbose=False)
    return True


def finish(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The written graph optimised and verified against the plain one (folder holds the plain
    export and its meta.json): {"prefix": its meta.json entry}, or {} with its files removed."""
    from clipsearch.model import prefix_tower

    kept: dict[str, Any] = {}
    try:
        entry = _optimise(folder, FILE) or {"file": FILE}
        cosine, ref = prefix_tower.verify(folder, entry)
        if cosine >= prefix_tower.MIN_COSINE:
            # The plain graph's vectors of the check prompts: a bf16 run's self-check compares with
            # them instead of computing them again in fp32 (2.3 s of a first `tag` run at load 4).
            np.save(folder / prefix_tower.CHECK_VECTORS, ref)
            kept = {"prefix": {**entry, "graph": GRAPH, "verified_min_cosine": cosine,
                               "check_vectors": prefix_tower.CHECK_VECTORS}}
        return kept
    finally:
        if not kept:
            (folder / prefix_tower.CHECK_VECTORS).unlink(missing_ok=True)
        keep = (kept.get("prefix") or {}).get("file")
        for name in (FILE, FILE.replace(".onnx", ".opt.onnx")):
            if name != keep:
                (folder / name).unlink(missing_ok=True)
                (folder / (name + ".data")).unlink(missing_ok=True)


def _optimise(folder: Path, file: str) -> dict[str, Any]:
    """The graph saved with ONNX Runtime's EXTENDED optimisations, weights in a file of its own
    that a session memory-maps (text_tower.save_optimised); {} when
    ONNX Runtime cannot, and the plain file stays."""
    target = folder / file.replace(".onnx", ".opt.onnx")
    try:
        text_tower.save_optimised(folder / file, target)
    except Exception:  # noqa: BLE001 - the unoptimised graph answers the same, only loads slower
        return {}
    return {"file": target.name, "preoptimized": True}
