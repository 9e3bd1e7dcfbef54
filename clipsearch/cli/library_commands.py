"""`index`, `status` and `duplicates`: building the index and looking after it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from clipsearch import paths as paths_mod
from clipsearch.cli.common import (
    RichProgress,
    check_writable,
    err,
    handles_errors,
    library,
    out,
    print_json,
    print_table,
    write_user_file,
)
from clipsearch.cli.options import PATH, device_option, index_option, json_option, model_option, precision_option


@click.command()
@click.argument("paths", type=PATH, nargs=-1)
@click.option("--exclude", "-x", multiple=True, help="Skip files or folders matching this glob (repeatable).")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links (each folder is visited once).")
@click.option("--include-hidden", is_flag=True, help="Also index hidden files and folders.")
@click.option("--rebuild", is_flag=True, help="Forget all vectors and re-embed everything (to switch models).")
@click.option("--wait", is_flag=True, help="Wait for another running index to finish instead of exiting with code 3.")
@click.option("--max-megapixels", type=int, default=200, show_default=True,
              help="Skip images with more pixels than this (decompression-bomb guard).")
@click.option("--show-skipped", is_flag=True, help="List every skipped file with its reason.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@json_option
@index_option
@model_option
@device_option
@precision_option
@click.option("--ray", is_flag=True, help="Decode and embed on Ray (pip install 'clipsearch[ray]'): the cluster at "
              "--ray-address, else $RAY_ADDRESS, else a local Ray runtime. docs/scale-out.md.")
@click.option("--ray-address", help="Ray cluster to use (implies --ray): auto, HOST:PORT or ray://HOST:10001.")
@click.option("--ray-workers", type=int,
              help="Exactly this many Ray workers, each with the model loaded [default: as many as fit].")
@click.option("--ray-cpus", type=float,
              help="CPUs per Ray worker, its decoding threads [default: 4, fewer on smaller nodes].")
@click.option("--ray-gpus", type=float, default=0.0, help="GPUs per Ray worker (1: one each; 0.5: two workers share "
              "one).")
@handles_errors
def index(paths: tuple[Path, ...], exclude: tuple[str, ...], follow_symlinks: bool, include_hidden: bool,
          rebuild: bool, wait: bool, max_megapixels: int, show_skipped: bool, quiet: bool, as_json: bool,
          index_path: Path | None, model: str | None, device: str | None, precision: str | None, ray: bool,
          ray_address: str | None, ray_workers: int | None, ray_cpus: float | None, ray_gpus: float) -> None:
    """Add new and changed photos under PATHS to the index; forget deleted ones.

    Without PATHS, every folder indexed before is scanned again, and the ones that are gone are
    forgotten (`clipsearch status` lists them).
    """
    from clipsearch.cli import render

    lib = library(index_path, model, device, precision, quiet=quiet)
    progress = RichProgress(quiet or as_json)
    on_ray = None
    if ray or ray_address:
        from clipsearch.ingest.ray_executor import RayOptions

        on_ray = RayOptions(ray_address, ray_workers, ray_cpus, ray_gpus)
    started = time.perf_counter()
    with progress.progress:
        summary = lib.index(paths, exclude=exclude, follow_symlinks=follow_symlinks, include_hidden=include_hidden,
                            rebuild=rebuild, wait=wait, max_pixels=max_megapixels * 1_000_000, progress=progress,
                            ray=on_ray)
    if as_json:
        print_json(summary.as_dict())
        return
    if show_skipped and summary.skipped_files:
        sys.stdout.write(render.skipped_lines(summary.skipped_files))  # tabs kept: rich would expand them
    if not quiet:
        err.print(render.index_summary(summary, time.perf_counter() - started), end="", markup=False)


@click.command()
@click.argument("paths", type=PATH, nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Wait for a running index to finish instead of exiting with code 3.")
@json_option
@index_option
@handles_errors
def forget(paths: tuple[Path, ...], wait: bool, as_json: bool, index_path: Path | None) -> None:
    """Remove the photos at or under PATHS from the index: records, vectors, tags. The files stay.

    PATHS are folders or photos, which may no longer exist. Exits 1 when none of them was in the
    index.
    """
    from clipsearch.cli import render

    gone = library(index_path).forget_paths(paths, wait=wait)
    if as_json:
        print_json(gone.as_dict())
    else:
        err.print(render.forget_summary(gone), end="", markup=False)
    if len(gone.unknown) == len(paths):
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--show-skipped", is_flag=True, help="List every skipped file with its reason.")
@json_option
@index_option
@handles_errors
def status(show_skipped: bool, as_json: bool, index_path: Path | None) -> None:
    """Where the index is, its model, how many photos, what was skipped or waits to be embedded again, the last run."""
    from clipsearch.cli import render

    lib = library(index_path)
    st = lib.status()
    if as_json:
        payload = st.as_dict()
        if show_skipped:
            payload["skipped_files"] = [{"path": p, "reason": r, "detail": d} for p, r, d in lib.skipped()]
        print_json(payload)
        return
    out.print(render.status_text(st), end="", markup=False)
    if show_skipped:
        sys.stdout.write(render.skipped_lines(lib.skipped()))  # tabs kept: rich would expand them


@click.command()
@click.argument("paths", type=PATH, nargs=-1)
@click.option("--similar", is_flag=True, help="Also group photos of the same scene or burst (a third, looser tier).")
@click.option("--threshold", type=float, default=0.95, show_default=True,
              help="Minimum CLIP cosine for the near tier (confirmed by a difference hash).")
@click.option("--similar-threshold", type=float, default=0.90, show_default=True,
              help="Minimum CLIP cosine for the similar tier.")
@click.option("--window", type=float, default=120.0, show_default=True,
              help="Similar photos must be taken within this many seconds (when both have a capture time).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table or json.")
@click.option("--json", "as_json", is_flag=True, help="Shortcut for --format json.")
@click.option("--paths-to-remove", "to_remove", is_flag=True,
              help="Print only the photos that are not the one to keep, one per line.")
@click.option("--null", "-0", "null", is_flag=True, help="With --paths-to-remove: NUL-separated.")
@click.option("--html", type=PATH, help="Also write a contact sheet of every group to this HTML file.")
@index_option
@handles_errors
def duplicates(paths: tuple[Path, ...], similar: bool, threshold: float, similar_threshold: float, window: float,
               fmt: str, as_json: bool, to_remove: bool, null: bool, html: Path | None,
               index_path: Path | None) -> None:
    """Groups of copies: exact, near (resized, re-encoded, edited) and, with --similar, bursts. Deletes nothing.

    PATHS limits it to photos under these folders [default: the whole index]. Exits 1 when there are
    no duplicates.
    """
    import json

    from clipsearch.cli import render

    check_writable(html, "the contact sheet")
    lib = library(index_path)
    groups = lib.duplicates(paths, near_cosine=threshold, similar=similar, similar_cosine=similar_threshold,
                            similar_window_s=window)
    if to_remove or null:
        sep = "\0" if null else "\n"
        sys.stdout.write("".join(f"{m.path if null else paths_mod.display(m.path)}{sep}"
                                 for g in groups for m in g.remove))
    elif as_json or fmt == "json":
        sys.stdout.write(json.dumps({"schema_version": render.SCHEMA_VERSION,
                                     "groups": [g.as_dict() for g in groups]}, indent=2, ensure_ascii=False) + "\n")
    elif groups:
        print_table(render.duplicates_table(groups, out.width if out.is_terminal else None))
    if html is not None:
        thumbs = {m.id: lib.thumbnail_of(m.id, m.path, m.mtime_ns) for g in groups for m in g.members}
        write_user_file(html, render.duplicates_html(groups, thumbs), "the contact sheet")
    if groups:
        err.print(render.duplicates_summary(groups), end="", markup=False)
    else:
        err.print("no duplicates found", markup=False)
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--force", is_flag=True, help="Copy what is readable into a fresh database even if SQLite's checks pass.")
@json_option
@index_option
@handles_errors
def repair(force: bool, as_json: bool, index_path: Path | None) -> None:
    """Salvage a damaged index: readable rows into a fresh database, the damaged file kept aside.

    Photos that lost their vector are re-embedded by the next `clipsearch index`.
    """
    from clipsearch import config
    from clipsearch.index import repair as repair_mod

    summary = repair_mod.repair(config.index_dir(index_path), force=force)
    if as_json:
        print_json(summary.as_dict())
        return
    shown = paths_mod.display(str(summary.folder))
    if summary.kept_aside is None:
        err.print(f"the index at {shown} passes SQLite's checks; nothing to repair", markup=False)
        return
    rows = summary.rows
    err.print(f"repaired the index at {shown} ({summary.problem or 'forced'}): kept {rows.get('images', 0)} photos "
              f"with their vectors, {rows.get('tags', 0)} tags, {rows.get('skipped', 0)} skip records; "
              f"{summary.dropped_images} photos lost their vector"
              + ("; the model's identity was lost, so no vector could be kept" if summary.model_lost else ""),
              markup=False)
    err.print(f"the damaged file is kept as {paths_mod.display(str(summary.kept_aside))}; run `clipsearch index "
              "FOLDER` to re-embed what was lost", markup=False)
