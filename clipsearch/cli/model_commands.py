"""`models list|download|info`: which CLIP models there are and how this machine runs them."""

from __future__ import annotations

from pathlib import Path

import click

from clipsearch import config
from clipsearch.cli.common import handles_errors, library, note, out, print_json, print_table
from clipsearch.cli.options import device_option, index_option, json_option, precision_option
from clipsearch.errors import ClipsearchError


@click.group(no_args_is_help=True)
def models() -> None:
    """List, download and inspect CLIP models."""


@models.command("list")
@json_option
@handles_errors
def models_list(as_json: bool) -> None:
    """Recommended models: size, CPU speed class, ImageNet zero-shot accuracy, whether cached here."""
    from clipsearch.cli import render
    from clipsearch.model import languages
    from clipsearch.model import names as models_mod

    cached = {}
    for e in models_mod.CATALOG:
        try:
            cached[e.name] = models_mod.cached_weights(models_mod.parse(e.name)) is not None
        except ClipsearchError:
            cached[e.name] = False
    if as_json:
        print_json([{**e.__dict__, "cached": cached[e.name], "default": e.name == config.DEFAULT_MODEL}
                    for e in models_mod.CATALOG])
        return
    print_table(render.models_table(models_mod.CATALOG, cached, config.DEFAULT_MODEL))  # whole in a pipe
    out.print(f"\nDefault: {config.DEFAULT_MODEL}. ImageNet: zero-shot top-1 accuracy.\n"
              f"For queries in other languages than English: {languages.RECOMMENDED}\n"
              "(pip install 'clipsearch[multilingual]'; docs/models.md).\n"
              "Any open_clip model works too: --model ARCH:PRETRAINED, local-dir:/path,\n"
              "or CONFIG.json:CHECKPOINT.", markup=False)


@models.command("download")
@click.argument("model")
@handles_errors
def models_download(model: str) -> None:
    """Download MODEL's weights into the Hugging Face cache; MODEL as in `clipsearch models list`.

    For example: clipsearch models download ViT-B-32-256:datacomp_s34b_b86k
    """
    from clipsearch.model import names as models_mod

    spec = models_mod.parse(model)
    path = models_mod.resolve_weights(spec, download=True, notify=note, downloading=True)
    out.print(f"{spec.name}: {path}", markup=False)
    out.print(f"sha256 {models_mod.sha256_of(path)}", markup=False)


@models.command("info")
@click.argument("model", required=False)
@index_option
@device_option
@precision_option
@json_option
@handles_errors
def models_info(model: str | None, index_path: Path | None, device: str | None, precision: str | None,
                as_json: bool) -> None:
    """Which model is selected, where its weights are, and how this machine would run it.

    MODEL defaults to the one the index or $CLIPSEARCH_MODEL selects.
    """
    from clipsearch.model import embedder
    from clipsearch.model import names as models_mod

    spec = library(index_path, model).model_spec()
    weights = models_mod.cached_weights(spec)
    dev = embedder.pick_device(device)
    info: dict[str, object] = {
        "model": spec.name, "kind": spec.kind,
        "weights": str(weights) if weights else None,
        "weights_sha256": models_mod.sha256_of(weights) if weights else None,
        "device": dev, "precision": embedder.pick_precision(precision, dev),
        **embedder.runtime_summary(),
    }
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        shown = value if value is not None else "not on this machine (clipsearch models download MODEL)"
        out.print(f"{key + ':':16}{shown}", markup=False)
