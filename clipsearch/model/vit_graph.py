"""open_clip's ViT image tower written as an ONNX graph straight from its weights: no torch.

So the first `index` of a model embeds without importing torch (issue 22: torch alone is 504 MB
resident here, torchvision and open_clip 245 MB more). vit_config.py decides whether a model's
tower is one this builds and reads its settings; here the graph is written node by node after
open_clip 3.3.0's transformer.py (VisionTransformer.forward in eval mode):

  conv1 (patch embedding, no bias) -> flatten to tokens -> class token in front -> + positions
  -> ln_pre (unless no_ln_pre) -> per block: x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x)))
  -> pooling (the class token, or the mean of the patch tokens) with ln_post before it or after
  (final_ln_after_pool) -> @ proj.

Attention is nn.MultiheadAttention's: one in_proj for q, k and v, softmax(q k^T / sqrt(head_dim)) v
per head, out_proj. The 1/sqrt(head_dim) is folded into the query rows of in_proj (exact for 64-wide
heads, a power of two), and "tok" pooling takes the class token before ln_post, which normalises
each token alone, so the result is the same. GELU is the exact erf form (ONNX Runtime fuses it),
QuickGELU x * sigmoid(1.702 x); LayerNorm's epsilon is the config's (1e-5 by default).

The weights never sit in memory together: each tensor is read from the safetensors file, cast to
float32, laid out for MatMul and appended to the external data file, one at a time; the graph
itself holds only references. The folder is image_export's layout (graph, weights file, meta.json
with the preprocessing), so image_tower and onnx_indexing run it unchanged, written under a
temporary name and renamed into place. It is not verified against open_clip here (that needs
torch): meta.json says `built: vit_graph` and carries no `reference`, so image_tower.available
(what queries ask) refuses it until the background exporter, which has torch, has checked it on
the check pictures and recorded open_clip's vectors (verify), or replaced it with its own export.
Until then its vectors are stored with its mark (`unchecked_mark`), and the photos whose vectors
carry the mark of a graph that check rejected (`rejected_mark`) are embedded again by the next
index run (index/unchecked.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import background_export, image_tower, onnx_proto, text_tower
from clipsearch.model.vit_config import VitTower, head_scale

BUILT = "vit_graph"  # meta.json's `built` for a graph made here
OPSET = 17  # LayerNormalization; read by ONNX Runtime and OpenVINO alike
IR_VERSION = 8  # the IR of opset 17
ALIGN = 4096  # each tensor page-aligned in the data file, so ONNX Runtime can map it


class _Writer:
    """The graph under construction: nodes, and initializers streamed to the external data file."""

    def __init__(self, data: Path) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self.data = data.open("wb")
        self.count = 0
        self.scalars: set[str] = set()

    def weight(self, name: str, arr: np.ndarray) -> str:
        """A float32 tensor: small ones inside the graph, the rest page-aligned in the data file."""
        arr = np.ascontiguousarray(arr, dtype="<f4")
        if arr.nbytes < 1024:
            self.inits.append(onnx_proto.array(name, arr))
            return name
        self.data.write(b"\0" * ((-self.data.tell()) % ALIGN))
        offset = self.data.tell()
        self.data.write(arr.data)  # the array's own buffer: no copy
        self.inits.append(onnx_proto.tensor(name, arr.shape, onnx_proto.FLOAT,
                                            external=(Path(self.data.name).name, offset, arr.nbytes)))
        return name

    def const(self, name: str, values: list[int] | int) -> str:
        """A small int64 constant (a shape, an index; a plain int is a scalar), inside the graph."""
        self.inits.append(onnx_proto.array(name, np.asarray(values, dtype=np.int64)))
        return name

    def scalar(self, name: str, value: float) -> str:
        """A float32 scalar, written once however many nodes use it."""
        if name not in self.scalars:
            self.scalars.add(name)
            self.inits.append(onnx_proto.array(name, np.asarray(value, dtype=np.float32)))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        self.count += 1
        out = f"{kind.lower()}_{self.count}"
        self.nodes.append(onnx_proto.node(kind, inputs, [out], attrs))
        return out


def _layer_norm(g: _Writer, t: VitTower, x: str, prefix: str) -> str:
    return g.op("LayerNormalization", [x, g.weight(prefix + ".weight", t.tensor(prefix + ".weight")),
                                       g.weight(prefix + ".bias", t.tensor(prefix + ".bias"))],
                axis=-1, epsilon=t.eps)


def _linear(g: _Writer, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    """x @ weight.T + bias, the weight stored transposed for MatMul."""
    return g.op("Add", [g.op("MatMul", [x, g.weight(name + ".weight_t", weight.T)]), g.weight(name + ".bias", bias)])


def _block(g: _Writer, t: VitTower, x: str, i: int) -> str:
    p = f"visual.transformer.resblocks.{i}."
    w, hd = t.width, t.width // t.heads
    h = _layer_norm(g, t, x, p + "ln_1")
    in_w, in_b = t.tensor(p + "attn.in_proj_weight"), t.tensor(p + "attn.in_proj_bias")
    scale = np.float32(head_scale(t))
    in_w[:w] *= scale  # the query rows: (q * s) k^T is q k^T * s
    in_b[:w] *= scale
    qkv = _linear(g, h, in_w, in_b, p + "attn.in_proj")  # (N, T, 3W)
    heads = g.op("Transpose", [g.op("Reshape", [qkv, g.const(p + "qkv_shape", [0, 0, 3, t.heads, hd])])],
                 perm=[2, 0, 3, 1, 4])  # (3, N, H, T, hd)
    q, k, v = _split3(g, heads, p)
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # (N, H, T, T)
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # (N, H, T, hd)
    ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const(p + "ctx_shape", [0, 0, w])])
    a = _linear(g, ctx, t.tensor(p + "attn.out_proj.weight"), t.tensor(p + "attn.out_proj.bias"), p + "attn.out_proj")
    if t.layer_scale:
        a = g.op("Mul", [a, g.weight(p + "ls_1.gamma", t.tensor(p + "ls_1.gamma"))])
    x = g.op("Add", [x, a])
    h = _linear(g, _layer_norm(g, t, x, p + "ln_2"), t.tensor(p + "mlp.c_fc.weight"), t.tensor(p + "mlp.c_fc.bias"),
                p + "mlp.c_fc")
    h = _gelu(g, h, t.quick_gelu)
    m = _linear(g, h, t.tensor(p + "mlp.c_proj.weight"), t.tensor(p + "mlp.c_proj.bias"), p + "mlp.c_proj")
    if t.layer_scale:
        m = g.op("Mul", [m, g.weight(p + "ls_2.gamma", t.tensor(p + "ls_2.gamma"))])
    return g.op("Add", [x, m])


def _split3(g: _Writer, heads: str, p: str) -> tuple[str, str, str]:
    """q, k, v out of the (3, N, H, T, hd) tensor: a Gather of each (which drops the leading axis)."""
    q, k, v = (g.op("Gather", [heads, g.const(p + f"part{j}", j)], axis=0) for j in range(3))
    return q, k, v


def _gelu(g: _Writer, x: str, quick: bool) -> str:
    if quick:  # open_clip's QuickGELU
        return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, g.scalar("quick_gelu_k", 1.702)])])])
    # nn.GELU(): 0.5 x (1 + erf(x / sqrt 2)), the pattern ONNX Runtime fuses into one Gelu
    half = g.op("Mul", [x, g.scalar("half", 0.5)])
    erf = g.op("Erf", [g.op("Div", [x, g.scalar("sqrt2", float(np.sqrt(2.0)))])])
    return g.op("Mul", [half, g.op("Add", [erf, g.scalar("one", 1.0)])])


def graph(t: VitTower, folder: Path, file: str = "model.onnx") -> Path:
    """Write the tower's graph (`file`) and its weights (`file`.data) into folder."""
    g = _Writer(folder / f"{file}.data")
    try:
        w = t.width
        x = g.op("Conv", ["pixels", g.weight("visual.conv1.weight", t.tensor("visual.conv1.weight"))],
                 kernel_shape=[t.patch, t.patch], strides=[t.patch, t.patch])  # (N, W, g, g)
        x = g.op("Transpose", [g.op("Reshape", [x, g.const("tokens_shape", [0, w, -1])])], perm=[0, 2, 1])
        batch = g.op("Shape", ["pixels"], start=0, end=1)
        cls = g.op("Expand", [g.weight("visual.class_embedding", t.tensor("visual.class_embedding").reshape(1, 1, w)),
                              g.op("Concat", [batch, g.const("one_w", [1, w])], axis=0)])
        x = g.op("Concat", [cls, x], axis=1)
        x = g.op("Add", [x, g.weight("visual.positional_embedding", t.tensor("visual.positional_embedding"))])
        if t.ln_pre:
            x = _layer_norm(g, t, x, "visual.ln_pre")
        for i in range(t.layers):
            x = _block(g, t, x, i)
        if t.pool == "tok":  # ln_post is per token: normalising the class token alone is the same
            x = _layer_norm(g, t, g.op("Gather", [x, g.const("cls_index", 0)], axis=1), "visual.ln_post")
        else:
            if not t.ln_after_pool:
                x = _layer_norm(g, t, x, "visual.ln_post")
            patches = g.op("Slice", [x, g.const("from1", [1]), g.const("to_end", [2**62]), g.const("axis1", [1])])
            x = g.op("ReduceMean", [patches], axes=[1], keepdims=0)
            if t.ln_after_pool:
                x = _layer_norm(g, t, x, "visual.ln_post")
        out = g.op("MatMul", [x, g.weight("visual.proj", t.tensor("visual.proj"))])
        g.nodes.append(onnx_proto.node("Identity", [out], ["features"], {}))
    finally:
        g.data.close()
    pixels = onnx_proto.value_info("pixels", ["batch", 3, t.image_size, t.image_size])
    features = onnx_proto.value_info("features", ["batch", t.embed_dim])
    (folder / file).write_bytes(onnx_proto.model(g.nodes, g.inits, [pixels], [features], "open_clip_visual",
                                                 OPSET, IR_VERSION, "clipsearch.vit_graph"))
    return folder / file


def _optimise(folder: Path, file: str) -> str:
    """ONNX Runtime's EXTENDED optimisations saved once (text_tower.save_optimised), weights
    memory-mapped beside it; the raw graph is then deleted. Unlike image_export._preoptimize there
    is no before/after comparison: the verification against open_clip covers the saved file."""
    target = "model.opt.onnx"
    text_tower.save_optimised(folder / file, folder / target)
    (folder / file).unlink()
    (folder / f"{file}.data").unlink()
    return target


def build(t: VitTower, index_dir: Path) -> Path:
    """The tower's graph written, optimised and renamed into index_dir/image-model; that folder."""
    sha = t.identity().weights_sha256
    tmp = index_dir / f".{image_tower.FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        file = _optimise(tmp, graph(t, tmp).name)
        meta: dict[str, Any] = {"weights_sha256": sha, "model": t.name, "file": file, "preoptimized": True,
                                "preprocess": image_tower.preprocess_record(t.preprocess), "precision": "fp32",
                                "built": BUILT}
        meta["sizes"] = {n: (tmp / n).stat().st_size for n in (file, f"{file}.data") if (tmp / n).exists()}
        (tmp / "meta.json").write_text(json.dumps(meta))
        image_tower.remove(index_dir)
        os.replace(tmp, index_dir / image_tower.FOLDER)
        return index_dir / image_tower.FOLDER
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def built(index_dir: Path, weights_sha256: str) -> bool:
    """Whether index_dir holds a whole graph built here for these weights (verified or not)."""
    try:
        meta = json.loads((index_dir / image_tower.FOLDER / "meta.json").read_text())
        sizes = meta.get("sizes") or {}
        return (meta.get("built") == BUILT and meta.get("weights_sha256") == weights_sha256 and bool(sizes)
                and all((index_dir / image_tower.FOLDER / n).stat().st_size == s for n, s in sizes.items()))
    except (OSError, ValueError, AttributeError):
        return False


def unchecked_mark(meta: dict[str, Any]) -> str | None:
    """What the vectors of the tower whose meta.json is `meta` are stored with (index/unchecked.py):
    for a graph built here and not yet checked against open_clip, its kind and weights; None for a
    checked graph or a torch export, whose vectors open_clip has vouched for."""
    if meta.get("built") != BUILT or meta.get("reference") == image_tower.REFERENCE:
        return None
    return f"{BUILT}:{meta.get('weights_sha256')}"


def rejected_mark(index_dir: Path) -> str | None:
    """The mark of the graph the background check found unlike open_clip in this index, or None:
    the vectors carrying it want embedding again. Read from the exporter's durable verdict
    (background_export.DECLINED, written before the graph is replaced), never from the graph's
    folder, which is gone by then."""
    sha = background_export.declined(index_dir).get(BUILT)
    return None if sha is None else f"{BUILT}:{sha}"
