"""`embed` and `merge`: shards made on any machine, folded into an index (docs/scale-out.md)."""

from __future__ import annotations

from pathlib import Path

import click

from clipsearch.cli.common import RichProgress, err, handles_errors, library, note, print_json
from clipsearch.cli.options import PATH, device_option, index_option, json_option, precision_option


@click.command()
@click.argument("paths", type=PATH, nargs=-1, required=True)
@click.option("--shard", required=True,
              help="Which part, as i/N: files whose path relative to PATHS hashes to i of N (0-based).")
@click.option("--out", "-o", "out_dir", type=PATH, required=True, help="Shard folder to write (new or empty).")
@click.option("--exclude", "-x", multiple=True, help="Skip files or folders matching this glob (repeatable).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links.")
@click.option("--include-hidden", is_flag=True, help="Also hidden files and folders.")
@click.option("--max-megapixels", type=int, default=200, show_default=True,
              help="Skip images with more pixels than this (decompression-bomb guard).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@json_option
@click.option("--model", "-m", help="Model [default: $CLIPSEARCH_MODEL, else ViT-B-32-256:datacomp_s34b_b86k].")
@device_option
@precision_option
@handles_errors
def embed(paths: tuple[Path, ...], shard: str, out_dir: Path, exclude: tuple[str, ...], follow_symlinks: bool,
          include_hidden: bool, max_megapixels: int, quiet: bool, as_json: bool, model: str | None,
          device: str | None, precision: str | None) -> None:
    """Embed one shard of PATHS into a folder, on any machine; `clipsearch merge` adds it to an index."""
    from clipsearch import Library
    from clipsearch.ingest import shards

    lib = Library(model=model, device=device, precision=precision, notify=note)
    progress = RichProgress(quiet or as_json, verb="embedding")
    with progress.progress:
        summary = lib.embed_shard(paths, shards.parse_shard(shard), out_dir, exclude=exclude,
                                  follow_symlinks=follow_symlinks, include_hidden=include_hidden,
                                  max_pixels=max_megapixels * 1_000_000, progress=progress)
    if as_json:
        print_json(summary.as_dict())
    elif not quiet:
        err.print(summary.line(), markup=False)


@click.command()
@click.argument("shard_dirs", type=PATH, nargs=-1, required=True)
@click.option("--remap", multiple=True, help="OLD=NEW: index shard paths under OLD as under NEW (the tree is "
              "mounted elsewhere here; repeatable).")
@click.option("--wait", is_flag=True, help="Wait for another running index to finish instead of exiting with code 3.")
@json_option
@index_option
@handles_errors
def merge(shard_dirs: tuple[Path, ...], remap: tuple[str, ...], wait: bool, as_json: bool,
          index_path: Path | None) -> None:
    """Add shards to the index: one model only, the newest copy of a path wins, nothing is deleted.

    SHARD_DIRS are folders written by `clipsearch embed`.
    """
    summary = library(index_path).merge(shard_dirs, remap=remap, wait=wait)
    if as_json:
        print_json(summary.as_dict())
    else:
        err.print(summary.line(), markup=False)
