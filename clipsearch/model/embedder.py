"""Loading a CLIP model and turning images and texts into L2-normalised float32 vectors.

torch and open_clip are imported when an Embedder is built, never at module import: commands that
need no model (help, status, models list) start fast.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ModelError, UsageError
from clipsearch.model import cpu, names
from clipsearch.model.identity import ModelIdentity, Preprocess

if TYPE_CHECKING:
    import torch


def _load_torch() -> None:
    """Import torch with OpenMP's passive wait, then leave the environment as it was.

    Decoding threads and the model share the CPU while indexing. With OpenMP's default "active"
    wait the model's idle threads spin between operations and starve the decoders: measured on 2
    cores, passive waiting made indexing 25% faster on 12 MP photos and 10% on phone photos
    (docs/benchmarks.md). OpenMP reads the setting when torch loads it; removing it afterwards keeps
    FAISS (its own OpenMP, loaded later on the query path) on active waiting, which a single search
    wants: passive wake-ups cost milliseconds there. A user's own setting wins.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch  # noqa: F401
    finally:
        del os.environ["OMP_WAIT_POLICY"]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bf16 matrix instructions (AMX or AVX512-BF16): cpu.has_native_bf16, which
    the torch-free image tower asks too."""
    return cpu.has_native_bf16(cpuinfo)


def pick_device(requested: str | None) -> str:
    import torch

    req = (requested or "auto").lower()
    if req not in DEVICES and not req.startswith("cuda:"):
        raise UsageError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if req.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU")
    if req == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps asked for, but MPS is not available")
    return req


def pick_precision(requested: str | None, device: str) -> str:
    req = (requested or "auto").lower()
    if req not in PRECISIONS:
        raise UsageError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if req != "auto":
        return req
    if device.startswith("cuda") or device == "mps":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def dtype_of(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def pixel_tensor(pixels: np.ndarray, pre: Preprocess, device: str, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels (N, size, size, 3) -> the model's input: (x / 255 - mean) / std in float32, then `dtype`.

    In place after the first float copy: the same values as the out-of-place expression (the
    same float32 ops in the same order), without two more float32 batches (19 MB each at 32
    photos of 224 px) held at once beside it.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


class Embedder:
    """One loaded model on one device: `embed_images` and `embed_texts` return normalised float32."""

    unchecked: str | None = None  # open_clip itself: nothing to check its vectors against (onnx_indexing.py)

    def __init__(self, spec: names.ModelSpec, device: str | None = None, precision: str | None = None,
                 download: bool = True, notify: Callable[[str], None] | None = None) -> None:
        # The weights first: a missing file is an error in a second, not after torch's import.
        weights = names.resolve_weights(spec, download=download, notify=notify)
        _load_torch()
        import torch

        self.spec = spec
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        self.weights_path = weights
        self.dtype = dtype_of(self.precision)
        self.runtime = f"torch {self.precision}"  # what an index run's summary says ran the model
        # Only the image tower, read straight into the run's precision (lean_load.py); the text
        # tower follows when a text is first embedded. Checkpoints that do not qualify load whole.
        lean = _load_lean(spec, weights, self.device, self.dtype)
        self.lean = lean is not None
        self.model, self.preprocess, self.tokenizer = lean or _load(spec, weights, self.device)
        self.model.eval()
        if not self.lean and self.dtype != torch.float32:
            # Casting the weights is what makes bf16 fast on CPU; autocast alone copies too much.
            self.model.to(self.dtype)
        embed_dim = int(getattr(self.model, "embed_dim", 0) or _probe_dim(self.model, self.preprocess))
        self.identity = ModelIdentity(spec.name, embed_dim, names.sha256_of(weights))
        # The temperature of the model's own image-text softmax: relevance decisions use it (relevance.py).
        scale = getattr(self.model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp().item()) if scale is not None else 100.0
        # Sigmoid-loss models (SigLIP) learn a bias too: sigmoid(scale * cos + bias) is a per-pair probability.
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.detach().float().reshape(-1)[0].item()) if bias is not None else None

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        import torch

        with torch.inference_mode():
            return normalised(self.model.encode_image(pixel_tensor(pixels, self.preprocess, self.device, self.dtype)))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, dim) normalised float32. Sequences are cut after the end token (same result)."""
        import torch

        if not texts:
            return np.zeros((0, self.identity.embed_dim), dtype=np.float32)
        model = self.text_model()
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            feats = encode_texts(model, tokens)
            return normalised(feats)


    def text_model(self) -> Any:
        """The model with its text tower loaded (read from the weights file on first use)."""
        if self.lean:
            from clipsearch.model import lean_load

            if lean_load.TEXT not in lean_load.loaded_towers(self.model):
                lean_load.materialise(self.model, self.weights_path, (lean_load.TEXT,), self.dtype, self.device)
        return self.model


def normalised(feats: Any) -> np.ndarray:
    import torch

    out = torch.nn.functional.normalize(feats.float(), dim=-1)
    return out.cpu().numpy().astype(np.float32, copy=False)


def has_standard_text_tower(model: Any) -> bool:
    """open_clip's own causal CLIP text tower, pooled at the end-of-text token: the one tower whose
    padding can be cut (encode_texts) and that text_export.py can export."""
    import open_clip

    return (isinstance(model, open_clip.model.CLIP) and getattr(model, "text_pool_type", "") == "argmax"
            and getattr(model, "attn_mask", None) is not None)


def encode_texts(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text, on tokens cut after the longest end-of-text position where that is exact.

    The standard text tower is causal and pools at the end token, so the padding after it changes
    nothing but costs most of the work (prompts are 10-13 tokens of 77).
    """
    hf_pad = getattr(getattr(getattr(model, "text", None), "config", None), "pad_token_id", None)
    if hf_pad is not None and not has_standard_text_tower(model):
        # A Hugging Face tower (XLM-R, NLLB) masks its padding out of attention and pooling: cutting it
        # is exact too, and saves most of the work (random-weight xlm-roberta-base, one Korean query on
        # 2 busy cores: 1266 ms at 77 columns, 62 ms cut).
        length = max(2, int((tokens != hf_pad).sum(dim=1).max().item()))
        return model.encode_text(tokens[:, :length])
    if not has_standard_text_tower(model):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=1).max().item()) + 1
    return encode_cut_tokens(model, tokens[:, :length])


def encode_cut_tokens(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text for tokens already cut after the end token.

    The length comes from the input's shape, not from the tokens' values, so the ONNX export of this
    function (text_export.py) accepts any length up to the context length.
    """
    return encode_embedded(model, model.token_embedding(tokens), tokens)


def encode_embedded(model: Any, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """encode_cut_tokens after the token lookup: the exported text tower (text_export.py) starts here."""
    import torch
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = embedded.to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def _probe_dim(model: Any, pre: Preprocess) -> int:
    import torch

    with torch.inference_mode():
        p = next(model.visual.parameters())  # the text tower may not be loaded (lean_load.py)
        out = model.encode_image(torch.zeros(1, 3, pre.size, pre.size, dtype=p.dtype, device=p.device))
    return int(out.shape[-1])


def _preprocess_from(model: Any) -> Preprocess:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", 224)
    if isinstance(size, (list, tuple)):
        size = size[0]
    m = [float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))]
    s = [float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711))]
    return Preprocess(int(size), (m[0], m[1], m[2]), (s[0], s[1], s[2]),
                      str(cfg.get("interpolation", "bicubic")), str(cfg.get("resize_mode", "shortest")),
                      int(cfg.get("fill_color", 0) or 0))


def _register_config(stem: str, model_cfg: dict[str, Any]) -> str:
    """Register an architecture from a config file through open_clip's public `add_model_config`,
    which takes a file holding the model config itself (a checkpoint's config nests it)."""
    import tempfile

    import open_clip

    arch = f"clipsearch-{stem}"
    with tempfile.TemporaryDirectory(prefix="clipsearch-config-") as folder:
        path = Path(folder) / f"{arch}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    return arch


def _local_hf_tower(folder: Path) -> dict[str, Any] | None:
    """The model config of a local-dir model whose Hugging Face text tower ships in the folder itself
    (config.json and tokenizer files beside the weights), else None."""
    try:
        cfg = json.loads((folder / "open_clip_config.json").read_text())
    except (OSError, ValueError):
        return None
    model_cfg = cfg.get("model_cfg", {})
    if model_cfg.get("text_cfg", {}).get("hf_model_name") and (folder / "config.json").is_file():
        return {**cfg, "model_cfg": model_cfg}
    return None


def _load_local_hf(folder: Path, weights: Path, device: str) -> tuple[Any, Any]:
    """A local-dir model with its HF text tower in the folder: open_clip's local-dir loader would ask
    transformers for the name the config records (a hub name, or a path relative to wherever the
    folder was made), so the tower's name is pointed at the folder and the architecture registered."""
    import open_clip

    cfg = _local_hf_tower(folder) or {}
    model_cfg = cfg["model_cfg"]
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
                "hf_model_pretrained": False}  # the weights come from the checkpoint, never from the hub
    arch = _register_config(folder.name, {**model_cfg, "text_cfg": text_cfg})
    model = open_clip.create_model(arch, pretrained=str(weights), device=device, weights_only=True,
                                   force_preprocess_cfg=cfg.get("preprocess_cfg") or None)
    return model, open_clip.get_tokenizer(f"local-dir:{folder}")


def _load(spec: names.ModelSpec, weights: Path, device: str) -> tuple[Any, Preprocess, Any]:
    """open_clip's own loading: the whole model, weights in fp32."""
    model, tokenizer = _create(spec, weights, device, load_weights=True)
    return model, _preprocess_from(model), tokenizer


def _load_lean(spec: names.ModelSpec, weights: Path, device: str,
               dtype: torch.dtype) -> tuple[Any, Preprocess, Any] | None:
    """The model as open_clip builds it, with only its image tower loaded, in `dtype`; None when the
    checkpoint does not qualify (lean_load.py) and open_clip's own loading must do."""
    from clipsearch.model import lean_load

    if weights.suffix != ".safetensors" or (spec.kind == "local-dir" and _local_hf_tower(Path(spec.path))):
        return None  # a local Hugging Face tower is built and loaded in one step: open_clip's path
    model, tokenizer = lean_load.skeleton(lambda: _create(spec, weights, "meta", load_weights=False))
    try:
        if not lean_load.eligible(model, weights):
            return None
        lean_load.materialise(model, weights, (lean_load.IMAGE,), dtype, device)
    except (ValueError, OSError, RuntimeError):
        return None  # open_clip's own path then loads it, or says why it cannot
    return model, _preprocess_from(model), tokenizer


def _create(spec: names.ModelSpec, weights: Path, device: str, load_weights: bool) -> tuple[Any, Any]:
    import open_clip

    kw: dict[str, Any] = {"device": device, "weights_only": True, "load_weights": load_weights}
    try:
        if spec.kind == "local-dir" and _local_hf_tower(Path(spec.path)) is not None:
            model, tokenizer = _load_local_hf(Path(spec.path), weights, device)
        elif spec.kind == "local-dir":
            name = f"local-dir:{spec.path}"
            model = open_clip.create_model(name, **kw)
            tokenizer = open_clip.get_tokenizer(name)
        elif spec.kind == "hf-hub":
            model = open_clip.create_model(spec.name, **kw)
            tokenizer = open_clip.get_tokenizer(spec.name)
        elif spec.kind == "config":
            cfg = json.loads(Path(spec.path).read_text())
            arch = _register_config(Path(spec.path).stem, cfg.get("model_cfg", cfg))
            force = cfg.get("preprocess_cfg") or None
            model = open_clip.create_model(arch, pretrained=str(weights), force_preprocess_cfg=force, **kw)
            tokenizer = open_clip.get_tokenizer(arch)
        else:
            tag_cfg = open_clip.pretrained.get_pretrained_cfg(spec.arch, spec.tag) or {}
            # The weights come as a file path, so pass on what the tag would have set itself.
            force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "fill_color")
                     if k in tag_cfg}
            model = open_clip.create_model(spec.arch, pretrained=str(weights),
                                           force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                                           force_preprocess_cfg=force or None, **kw)
            tokenizer = open_clip.get_tokenizer(spec.arch)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        if "transformers" in str(exc):  # open_clip's HF text towers (multilingual models) need it
            raise ModelError(f"{spec.name} has a Hugging Face text tower: pip install "
                             "'clipsearch[multilingual]' (transformers) to use it") from exc
        raise ModelError(f"could not load {spec.name} from {weights}: {str(exc).splitlines()[0][:300]}") from exc
    return model, tokenizer


def runtime_summary() -> dict[str, str]:
    """What `models info` reports about this machine's torch."""
    import torch

    return {
        "torch": torch.__version__,
        "cuda": str(torch.cuda.is_available()),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": str(cpu_has_native_bf16()),
        "threads": str(torch.get_num_threads()),
    }
