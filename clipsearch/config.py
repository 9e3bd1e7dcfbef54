"""Where clipsearch keeps its data and which model it uses, resolved from flags and environment."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "ViT-B-32-256:datacomp_s34b_b86k"
ENV_HOME = "CLIPSEARCH_HOME"
ENV_MODEL = "CLIPSEARCH_MODEL"
ENV_DEVICE = "CLIPSEARCH_DEVICE"
ENV_TEXT_MODEL = "CLIPSEARCH_TEXT_MODEL"
DEFAULT_MAX_PIXELS = 200_000_000  # 200 MP: past every camera, short of decompression bombs


def data_home() -> Path:
    """The folder that holds indexes: $CLIPSEARCH_HOME, else the platform's user data dir."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("clipsearch", appauthor=False))


def cache_home() -> Path:
    """Rebuildable files shared between indexes (exported text towers): `<$CLIPSEARCH_HOME>/cache`
    when that is set, else the platform's user cache dir."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser() / "cache"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clipsearch", appauthor=False))


def index_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The index folder: an explicit --index PATH, else `<data home>/index`."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    return (data_home() / "index").absolute()


def model_name(explicit: str | None = None) -> str | None:
    """The model asked for by --model or $CLIPSEARCH_MODEL; None lets the index (or default) decide."""
    return explicit or os.environ.get(ENV_MODEL) or None


def device_name(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get(ENV_DEVICE) or None


def text_model_enabled() -> bool:
    """Whether indexing exports the torch-free text encoder for queries ($CLIPSEARCH_TEXT_MODEL=off: no)."""
    return os.environ.get(ENV_TEXT_MODEL, "on").strip().lower() not in ("0", "off", "no", "false")
