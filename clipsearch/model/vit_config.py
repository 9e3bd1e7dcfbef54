"""An open_clip ViT image tower read from its config and safetensors header, without torch.

The first `index` of a model used to import torch (504 MB resident here), torchvision and
open_clip just to run the image tower (issue 22). vit_graph.py builds that tower as an ONNX graph
straight from the weights file; this module decides whether it can, and says what the torch path
would have made of the model: the config open_clip builds it from, the preprocessing the Embedder
derives from it (embedder._preprocess_from), the identity an index records, the logit scale.

Where the config comes from, as open_clip's create_model takes it (factory.py, 3.3.0):
  - `ARCH:TAG`: open_clip's own `model_configs/ARCH.json` (found through importlib's spec, without
    importing open_clip); the tag's preprocessing and QuickGELU come from TAGS, a copy of what
    open_clip's pretrained table says for the catalogue's ViTs (tests/test_vit_graph.py compares
    them); another tag is not eligible, since reading open_clip's table imports torch;
  - `local-dir:` and `hf-hub:`: the folder's (or the hub cache's) open_clip_config.json, its
    preprocess_cfg merged over open_clip's defaults, then the size set from the tower's image size;
  - `CONFIG.json:CHECKPOINT` (and a local folder with a Hugging Face text tower, which the Embedder
    loads the same way): open_clip's defaults, the image size, then the file's preprocess_cfg over it.

Eligible is exactly open_clip's `VisionTransformer` with the options vit_graph.py implements: conv
patch embedding, class token, learned (or fixed sin-cos) positions, optional ln_pre, pre-LN blocks
with GELU or QuickGELU and optional LayerScale, tok or avg pooling, ln_post before or after it,
and a projection; a square image; a .safetensors file whose `visual.*` keys and shapes are exactly
that tower's. Anything else (timm towers, ModifiedResNet, attentional pooling, custom blocks, CoCa,
unknown options, other files) returns None, and the run takes the torch path as before.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import names
from clipsearch.model.identity import ModelIdentity, Preprocess

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's PreprocessCfg defaults (transform.py), the base every preprocess config merges over.
DEFAULT_PREPROCESS: dict[str, Any] = {"size": 224, "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
                                      "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
# What open_clip's pretrained table sets for the catalogue's ViT tags (the keys embedder._create
# passes on as force_preprocess_cfg, and quick_gelu); checked against open_clip by the tests.
_OPENAI_TAG = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
TAGS: dict[str, dict[str, Any]] = {
    "ViT-B-32-256:datacomp_s34b_b86k": _OPENAI_TAG,
    "ViT-B-32:laion2b_s34b_b79k": _OPENAI_TAG,
    "ViT-B-32:openai": {**_OPENAI_TAG, "quick_gelu": True},
    "ViT-B-16:datacomp_xl_s13b_b90k": _OPENAI_TAG,
    "ViT-L-14:datacomp_xl_s13b_b90k": _OPENAI_TAG,
}
# CLIPVisionCfg's fields (model.py) with the values this builder implements; any other value (or
# an unknown field, which open_clip itself would refuse) makes the model ineligible.
_NEUTRAL: dict[str, Any] = {
    "attentional_pool": False, "output_tokens": False, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "timm_model_name": None, "act_kwargs": None,
}
_FREE = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value",
         "patch_dropout", "attn_pooler_queries", "attn_pooler_heads", "no_ln_pre", "pos_embed_type",
         "final_ln_after_pool", "pool_type", "norm_kwargs", "timm_model_pretrained", "timm_pool", "timm_proj",
         "timm_proj_bias", "timm_drop", "timm_drop_path"}
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


@dataclass(frozen=True)
class VitTower:
    """Everything vit_graph.build needs, and what the torch path would have recorded."""

    name: str  # the model's name as the index records it
    weights: Path
    width: int
    layers: int
    heads: int
    mlp_width: int
    patch: int
    image_size: int
    embed_dim: int
    quick_gelu: bool
    layer_scale: bool
    ln_pre: bool
    pool: str  # "tok" or "avg"
    ln_after_pool: bool
    eps: float
    preprocess: Preprocess
    header: dict[str, Any]  # the safetensors header: key -> dtype, shape, offsets
    data_start: int  # where the tensors' bytes begin in the file

    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.name, self.embed_dim, names.sha256_of(self.weights))

    def logit_scale(self) -> float:
        """exp(logit_scale) in float32, as the fp32 Embedder computes it."""
        return float(np.exp(self.tensor("logit_scale").reshape(-1)[0]))

    def logit_bias(self) -> float | None:
        return float(self.tensor("logit_bias").reshape(-1)[0]) if "logit_bias" in self.header else None

    def tensor(self, key: str) -> np.ndarray:
        """One tensor as float32, read with a plain seek and read (lean_load.read says why not mapped)."""
        info = self.header[key]
        begin, end = info["data_offsets"]
        with self.weights.open("rb") as f:
            f.seek(self.data_start + begin)
            raw = bytearray(end - begin)  # writable, read in place: no second copy
            f.readinto(raw)
        arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        if info["dtype"] == "BF16":  # bf16 is the upper half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(np.float32, copy=False).reshape(info["shape"])  # writable: build scales in place


def source_files() -> Path | None:
    """open_clip's package folder, found without importing it (which imports torch)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _hub_config(repo: str, download: bool) -> dict[str, Any] | None:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        found = try_to_load_from_cache(repo, "open_clip_config.json")
        if not isinstance(found, str) and download:
            found = hf_hub_download(repo, "open_clip_config.json")
        return json.loads(Path(found).read_text()) if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - no hub, offline, a bad file: the torch path says what is wrong
        return None


def _merge(base: dict[str, Any], overlay: dict[str, Any] | None) -> dict[str, Any]:
    """open_clip's merge_preprocess_dict: the overlay's known keys that are not None win."""
    out = {k: v for k, v in base.items() if k in DEFAULT_PREPROCESS}
    out.update({k: v for k, v in (overlay or {}).items() if k in DEFAULT_PREPROCESS and v is not None})
    return out


Configs = tuple[dict[str, Any], dict[str, Any], dict[str, Any], bool]


def configs(spec: names.ModelSpec, download: bool) -> Configs | None:
    """(model config, preprocess base, preprocess forced after the image size, force QuickGELU)
    as open_clip's create_model gets them on the Embedder's path (module docstring); None when this
    module cannot tell without torch."""
    if spec.kind == "pretrained":
        tag = TAGS.get(spec.name)
        folder = source_files()
        if tag is None or folder is None:
            return None
        path = folder / "model_configs" / f"{spec.arch.replace('/', '-')}.json"
        try:
            model_cfg = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        force = {k: v for k, v in tag.items() if k != "quick_gelu"}
        return model_cfg, dict(DEFAULT_PREPROCESS), force, bool(tag.get("quick_gelu", False))
    if spec.kind == "config":
        try:
            cfg = json.loads(Path(spec.path).read_text())
        except (OSError, ValueError):
            return None
        return cfg.get("model_cfg", cfg), dict(DEFAULT_PREPROCESS), cfg.get("preprocess_cfg") or {}, False
    if spec.kind == "local-dir":
        try:
            cfg = json.loads((Path(spec.path) / "open_clip_config.json").read_text())
        except (OSError, ValueError):
            return None
    elif spec.kind == "hf-hub":
        cfg = _hub_config(spec.arch, download) or {}
    else:
        return None
    if not isinstance(cfg.get("model_cfg"), dict):
        return None
    model_cfg = cfg["model_cfg"]
    text_cfg = model_cfg.get("text_cfg") or {}
    if spec.kind == "local-dir" and text_cfg.get("hf_model_name") and (Path(spec.path) / "config.json").is_file():
        return model_cfg, dict(DEFAULT_PREPROCESS), cfg.get("preprocess_cfg") or {}, False  # embedder._load_local_hf
    return model_cfg, _merge(DEFAULT_PREPROCESS, cfg.get("preprocess_cfg")), {}, False


def read_header(weights: Path) -> tuple[dict[str, Any], int]:
    """safetensors' layout: 8 bytes of header length, a JSON header (key -> dtype, shape, offsets),
    then the tensors' bytes from the returned offset on."""
    with weights.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + length


def _square(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 2 and value[0] == value[1] else None
    return int(value)


def preprocess_from(cfg: dict[str, Any]) -> Preprocess:
    """embedder._preprocess_from applied to the preprocess config the model would carry."""
    size = cfg.get("size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    m = [float(v) for v in cfg.get("mean", OPENAI_MEAN)]
    s = [float(v) for v in cfg.get("std", OPENAI_STD)]
    return Preprocess(int(size), (m[0], m[1], m[2]), (s[0], s[1], s[2]), str(cfg.get("interpolation", "bicubic")),
                      str(cfg.get("resize_mode", "shortest")), int(cfg.get("fill_color", 0) or 0))


def expected_shapes(t: VitTower) -> dict[str, tuple[int, ...]]:
    """The state dict of open_clip's VisionTransformer with these settings: every key and shape."""
    w, grid = t.width, t.image_size // t.patch
    out: dict[str, tuple[int, ...]] = {
        "visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
        "visual.proj": (w, t.embed_dim), "visual.conv1.weight": (w, 3, t.patch, t.patch),
        "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)}
    if t.ln_pre:
        out.update({"visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)})
    for i in range(t.layers):
        p = f"visual.transformer.resblocks.{i}."
        out.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                    p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                    p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                    p + "mlp.c_fc.weight": (t.mlp_width, w), p + "mlp.c_fc.bias": (t.mlp_width,),
                    p + "mlp.c_proj.weight": (w, t.mlp_width), p + "mlp.c_proj.bias": (w,)})
        if t.layer_scale:
            out.update({p + "ls_1.gamma": (w,), p + "ls_2.gamma": (w,)})
    return out


def tower(spec: names.ModelSpec, download: bool = False, notify: Any = None) -> VitTower | None:
    """The model's image tower as vit_graph.build takes it, or None where only torch can build it."""
    got = configs(spec, download)
    if got is None:
        return None
    model_cfg, base, force, force_quick = got
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict) or "multimodal_cfg" in model_cfg or "embed_dim" not in model_cfg:
        return None
    if any(k not in _FREE and k not in _NEUTRAL for k in vision):
        return None
    if any(vision.get(k, v) != v and not (k == "act_kwargs" and vision[k] == {}) for k, v in _NEUTRAL.items()):
        return None
    norm = vision.get("norm_kwargs") or {}
    layers, size, patch = vision.get("layers", 12), _square(vision.get("image_size", 224)), \
        _square(vision.get("patch_size", 16))
    if not isinstance(layers, int) or size is None or patch is None or set(norm) - {"eps"} \
            or vision.get("pool_type", "tok") not in ("tok", "avg") \
            or vision.get("pos_embed_type", "learnable") not in ("learnable", "sin_cos_2d"):
        return None
    width, head_width = int(vision.get("width", 768)), int(vision.get("head_width", 64))
    heads = width // head_width if head_width > 0 else 0  # as _build_vision_tower counts them
    if heads < 1 or width % heads:
        return None
    # The preprocessing open_clip attaches to the model: base, then the tower's image size, then forced keys.
    pre = _merge({**base, "size": (size, size)}, force)
    try:
        weights = names.resolve_weights(spec, download=download, notify=notify)
    except Exception:  # noqa: BLE001 - the torch path resolves them again and says why it cannot
        return None
    if weights.suffix != ".safetensors":
        return None
    try:
        header, start = read_header(weights)
    except (OSError, ValueError, KeyError, struct.error):
        return None
    embed_dim = int(model_cfg["embed_dim"])
    t = VitTower(spec.name, weights, width, layers, heads, int(width * float(vision.get("mlp_ratio", 4.0))),
                 patch, size, embed_dim, bool(model_cfg.get("quick_gelu", False) or force_quick),
                 vision.get("ls_init_value") is not None, not vision.get("no_ln_pre", False),
                 str(vision.get("pool_type", "tok")), bool(vision.get("final_ln_after_pool", False)),
                 float(norm.get("eps", 1e-5)), preprocess_from(pre), header, start)
    return t if _weights_match(t, model_cfg) else None


def _weights_match(t: VitTower, model_cfg: dict[str, Any]) -> bool:
    """The file's image-tower keys and shapes are exactly the tower's, and the shared scalars are there."""
    want = expected_shapes(t)
    have = {k: tuple(v.get("shape", ())) for k, v in t.header.items() if k.startswith("visual.")}
    if have != want or any(t.header[k].get("dtype") not in _DTYPES for k in want):
        return False
    if "logit_scale" not in t.header or t.header["logit_scale"].get("dtype") not in _DTYPES:
        return False
    # open_clip gives the model a logit bias exactly when the config sets one; a file that
    # disagrees goes through open_clip's own loading (which fills or refuses it).
    bias_cfg = model_cfg.get("init_logit_bias") is not None
    return bias_cfg == ("logit_bias" in t.header) and (not bias_cfg or t.header["logit_bias"].get("dtype") in _DTYPES)


def head_scale(t: VitTower) -> float:
    """Attention's 1/sqrt(head_dim), which vit_graph folds into the query projection."""
    return 1.0 / math.sqrt(t.width // t.heads)
