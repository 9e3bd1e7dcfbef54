"""Naming models, the recommended catalogue, and finding (or downloading) their weights.

Nothing here imports torch or open_clip at module level: `models list` and the query path stay light.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipsearch import config
from clipsearch.errors import ModelError, ModelNotAvailableError, UsageError
from clipsearch.model import languages

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
SAFETENSORS_NAME = "open_clip_model.safetensors"
BIN_NAME = "open_clip_pytorch_model.bin"


@dataclass(frozen=True)
class ModelSpec:
    """A model as the user named it, parsed.

    kind is one of "pretrained" (ARCH:TAG from open_clip's registry), "local-dir" (a folder with
    open_clip_config.json and weights), "config" (a config JSON plus a checkpoint), "hf-hub".
    """

    name: str
    kind: str
    arch: str = ""
    tag: str = ""
    path: str = ""
    checkpoint: str = ""


def parse(name: str) -> ModelSpec:
    """Parse `ARCH:TAG`, `local-dir:/path`, `hf-hub:org/repo` or `CONFIG.json:CHECKPOINT`."""
    name = name.strip()
    if not name:
        raise UsageError("empty model name")
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):]).expanduser()
        if not str(folder) or str(folder) == ".":
            raise UsageError("local-dir: needs a folder, e.g. local-dir:/models/my-clip")
        return ModelSpec(f"{LOCAL_DIR}{folder.absolute()}", "local-dir", path=str(folder.absolute()))
    if name.startswith(HF_HUB):
        repo = name[len(HF_HUB):]
        if "/" not in repo:
            raise UsageError(f"hf-hub: needs org/repo, got {repo!r}")
        return ModelSpec(name, "hf-hub", arch=repo)
    if ".json:" in name:
        cfg, ckpt = name.split(".json:", 1)
        cfg_path = Path(cfg + ".json").expanduser().absolute()
        ckpt_path = Path(ckpt).expanduser().absolute()
        return ModelSpec(f"{cfg_path}:{ckpt_path}", "config", path=str(cfg_path), checkpoint=str(ckpt_path))
    if ":" not in name:
        raise UsageError(
            f"model {name!r} names no weights: use ARCH:PRETRAINED (e.g. {config.DEFAULT_MODEL}), "
            "local-dir:/path, or CONFIG.json:CHECKPOINT; `clipsearch models list` shows choices")
    arch, tag = name.split(":", 1)
    return ModelSpec(name, "pretrained", arch=arch, tag=tag)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    size_mb: int
    speed: str
    imagenet_zero_shot: float | None  # None: not in open_clip's published results table
    note: str
    hf_hub: str  # where open_clip's registry says the weights live; kept here so listing needs no torch
    languages: str = "English"
    # The query path without torch (ONNX text tower, text_export.py): False where only the torch path works.
    fast_queries: bool = True


# ImageNet zero-shot top-1 from open_clip's published results; sizes are the fp32 weight files.
CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("ViT-B-32-256:datacomp_s34b_b86k", 578, "fast", 72.8, "best accuracy per CPU second",
                 "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K/"),
    CatalogEntry("ViT-B-32:laion2b_s34b_b79k", 578, "fast", 66.6, "widely used LAION model",
                 "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"),
    CatalogEntry("ViT-B-32:openai", 578, "fast", 63.3, "the original CLIP",
                 "timm/vit_base_patch32_clip_224.openai/"),
    CatalogEntry("ViT-B-16:datacomp_xl_s13b_b90k", 571, "medium", 73.5, "finer detail, ~5x slower on CPU",
                 "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K/"),
    CatalogEntry("ViT-L-14:datacomp_xl_s13b_b90k", 1710, "slow", 79.2, "best here; wants a GPU",
                 "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K/"),
    # Multilingual families (docs/models.md): Hugging Face text towers, `pip install 'clipsearch[multilingual]'`.
    # Sizes are fp32 parameter counts x 4 bytes; speed classes from docs/models.md's measurements.
    CatalogEntry(languages.RECOMMENDED, 1466, "fast", 62.4,
                 "recommended for non-English queries: ViT-B-32 images, XLM-RoBERTa text",
                 "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k/", "~100 (XLM-R)"),
    CatalogEntry("xlm-roberta-large-ViT-H-14:frozen_laion5b_s13b_b90k", 4770, "slow", 77.0,
                 "best multilingual accuracy; wants a GPU",
                 "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k/", "~100 (XLM-R)"),
    CatalogEntry("nllb-clip-base:v1", 2004, "fast", None, "NLLB text encoder: also low-resource languages",
                 "visheratin/nllb-clip-base-oc/", "201 (NLLB-200)"),
    CatalogEntry("nllb-clip-large:v1", 5600, "slow", None, "NLLB-1.3B text, ViT-H-14 images; wants a GPU",
                 "visheratin/nllb-clip-large-oc/", "201 (NLLB-200)"),
    CatalogEntry("nllb-clip-base-siglip:v1", 2028, "slow", None, "sigmoid loss: scores are probabilities",
                 "visheratin/nllb-clip-base-siglip/", "201 (NLLB-200)"),
    CatalogEntry("nllb-clip-large-siglip:v1", 4780, "slow", None, "sigmoid loss, SO400M images; wants a GPU",
                 "visheratin/nllb-clip-large-siglip/", "201 (NLLB-200)"),
    CatalogEntry("ViT-B-16-SigLIP-i18n-256:webli", 1480, "medium", None,
                 "multilingual SigLIP; queries take the torch path (no ONNX export yet)",
                 "timm/ViT-B-16-SigLIP-i18n-256/", "~100 (WebLI)", fast_queries=False),
)


def _hf_location(spec: ModelSpec) -> tuple[str, list[str]] | None:
    """(repo id, candidate filenames, safetensors first) for hub-hosted weights, else None."""
    if spec.kind == "hf-hub":
        return spec.arch, [SAFETENSORS_NAME, BIN_NAME]
    if spec.kind != "pretrained":
        return None
    hub = next((e.hf_hub for e in CATALOG if e.name == spec.name), "")
    if not hub:
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

        cfg = get_pretrained_cfg(spec.arch, spec.tag)
        if not cfg:
            tags = list_pretrained_tags_by_model(spec.arch)
            hint = (f"known tags for {spec.arch}: {', '.join(tags)}" if tags
                    else "`clipsearch models list` shows choices")
            raise ModelError(f"unknown model {spec.name!r}: {hint}")
        hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    # open_clip's convention: "org/repo/" means the default file names, "org/repo/file" one file.
    repo, filename = os.path.split(hub)
    names = [filename] if filename else [SAFETENSORS_NAME, BIN_NAME]
    if filename.endswith((".bin", ".pth", ".pt")):
        names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    return repo, names


def cached_weights(spec: ModelSpec) -> Path | None:
    """The weights file if it is on this machine already; never touches the network."""
    if spec.kind == "local-dir":
        for name in (SAFETENSORS_NAME, BIN_NAME):
            if (Path(spec.path) / name).is_file():
                return Path(spec.path) / name
        return None
    if spec.kind == "config":
        return Path(spec.checkpoint) if Path(spec.checkpoint).is_file() else None
    loc = _hf_location(spec)
    if loc is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, names = loc
    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _not_available(spec: ModelSpec, what: str, reason: str, downloading: bool = False) -> ModelNotAvailableError:
    if downloading:  # the user ran `models download`: telling them to run it would be no help
        return ModelNotAvailableError(
            f"could not download the weights of {spec.name} ({reason}). Download them on a machine with "
            "network and copy its Hugging Face cache, ~/.cache/huggingface, here, or use a local checkpoint: "
            "--model local-dir:/path/to/folder")
    return ModelNotAvailableError(
        f"weights for {spec.name} are not on this machine ({what}; {reason}). Get them with "
        f"`clipsearch models download {spec.name}` on a machine with network (then copy the Hugging Face "
        "cache, ~/.cache/huggingface, here), or use a local checkpoint: --model local-dir:/path/to/folder")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face Hub's host answers a TCP connection within `timeout` seconds.

    Without network the hub client retries for ~25 s before failing; this says so in about a
    second. Behind a proxy the host is not reached directly, so the client is left to try.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answered: list[bool] = []

    def connect() -> None:  # on a thread: name resolution itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout + 0.5)
    return bool(answered and answered[0])


def resolve_weights(spec: ModelSpec, download: bool = True, notify: Callable[[str], None] | None = None,
                    downloading: bool = False) -> Path:
    """The local weights file for `spec`, downloading it into the Hugging Face cache when allowed.

    `notify` hears one line before a download starts, so a caller can tell the user why it waits.
    `downloading`: the user asked for the download itself (`models download`), which the errors say.
    """
    found = cached_weights(spec)
    if found is not None:
        return found
    if spec.kind == "local-dir":
        if not Path(spec.path).is_dir():
            raise ModelError(f"model folder not found: {spec.path}")
        raise ModelError(f"no {SAFETENSORS_NAME} (or {BIN_NAME}) in model folder {spec.path}")
    if spec.kind == "config":
        raise ModelError(f"checkpoint not found: {spec.checkpoint}")
    loc = _hf_location(spec)
    if loc is None:
        raise ModelError(f"{spec.name} is only published as a plain URL download; "
                         "download it yourself and use CONFIG.json:CHECKPOINT or local-dir:")
    repo, names = loc
    what = f"{repo}/{names[0]} missing from the Hugging Face cache"
    if not download or _offline():
        reason = "HF_HUB_OFFLINE is set" if _offline() else "downloads are off"
        raise _not_available(spec, what, reason, downloading)
    if not hub_reachable():
        raise _not_available(spec, what, "could not reach the Hugging Face Hub: no network?", downloading)
    if notify is not None:
        size = next((f", about {e.size_mb} MB" for e in CATALOG if e.name == spec.name), "")
        notify(f"downloading the weights of {spec.name} from the Hugging Face Hub{size} (once)")
    return _download(spec, repo, names, what, downloading)


def _download(spec: ModelSpec, repo: str, names: list[str], what: str, downloading: bool) -> Path:
    import logging

    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    # The hub logs each retry as a warning; the user gets one clear line from us instead.
    hub_logger.setLevel(logging.ERROR)
    try:
        for name in names:
            try:
                return Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=name, library_name="clipsearch"))
            except LocalEntryNotFoundError:
                # Not a missing file: the hub itself could not be reached, so other names won't help.
                raise _not_available(spec, what, "could not reach the Hugging Face Hub", downloading) from None
            except (GatedRepoError, RepositoryNotFoundError) as exc:
                raise ModelError(f"{repo} is not available on the Hugging Face Hub ({type(exc).__name__})") from None
            except (OSError, ValueError) as exc:
                if getattr(getattr(exc, "response", None), "status_code", None) == 404:
                    continue  # this file name is not in the repo; try the next one
                raise _not_available(spec, what, f"download failed: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:160]}", downloading) from None
    finally:
        hub_logger.setLevel(level)
    raise ModelError(f"{repo} has none of {', '.join(names)}")


def sha256_of(path: Path) -> str:
    """sha256 of a weights file, cached by (path, size, mtime) so loading stays fast."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = config.data_home() / "weights-sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return str(cache[key])
    import hashlib  # loading OpenSSL costs a cold query ~10 ms; only hashing needs it

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return digest
