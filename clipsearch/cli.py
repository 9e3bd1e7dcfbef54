"""The `clipsearch` command: parse arguments, call the library, render. The only module that prints.

Exit codes (docs/cli.md): 0 success, 1 nothing found, 2 usage error, 3 index missing/locked/damaged,
4 model unavailable or mismatched, 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from clipsearch import __version__, config
from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:
    from clipsearch.library import Library, QueryResult
    from clipsearch.search import SearchResult

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="clipsearch",
    help="Search your photos by what is in them, with CLIP, on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List, download and inspect CLIP models.", no_args_is_help=True)
app.add_typer(models_app, name="models")

IndexOpt = Annotated[Path | None, typer.Option(
    "--index", help="Index folder [default: $CLIPSEARCH_HOME/index or the platform data dir].",
    show_default=False)]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model as ARCH:PRETRAINED, local-dir:/path or CONFIG.json:CHECKPOINT "
    "[default: $CLIPSEARCH_MODEL, else the index's model, else ViT-B-32-256:datacomp_s34b_b86k].",
    show_default=False)]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="auto, cpu, cuda or mps [default: auto: CUDA, then MPS, then CPU].", show_default=False)]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="auto, fp32, bf16 or fp16 [default: fp16 on GPU; bf16 on CPUs with bf16 units, "
    "else fp32].", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
RayOpt = Annotated[bool, typer.Option(
    "--ray", help="Decode and embed on Ray (pip install 'clipsearch[ray]'): the cluster at --ray-address, else "
    "$RAY_ADDRESS, else a local Ray runtime. docs/scale-out.md.")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="Ray cluster to use (implies --ray): auto, HOST:PORT or ray://HOST:10001.",
    show_default=False)]
RayWorkersOpt = Annotated[int | None, typer.Option(
    "--ray-workers", help="Exactly this many Ray workers, each with the model loaded [default: as many as fit].",
    show_default=False)]
RayCpusOpt = Annotated[float | None, typer.Option(
    "--ray-cpus", help="CPUs per Ray worker, its decoding threads [default: 4, fewer on smaller nodes].",
    show_default=False)]
RayGpusOpt = Annotated[float, typer.Option(
    "--ray-gpus", help="GPUs per Ray worker (1: one each; 0.5: two workers share one).")]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def handles_errors(fn: F) -> F:
    """Library errors become one red line on stderr and their documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClipsearchError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; what was committed is kept, rerun to continue", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a raw traceback
            log = _write_crash_log(exc)
            where = f"; details in {log}" if log else ""
            raise _fail(f"internal error ({type(exc).__name__}: {str(exc)[:200]}){where}. Please report it.",
                        INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


INTERNAL_ERROR = 70  # EX_SOFTWARE from sysexits.h: a bug in clipsearch, not in the user's request


def _write_crash_log(exc: BaseException) -> Path | None:
    """The traceback goes to a file, so the terminal gets one line and a bug report gets everything."""
    import datetime as dt
    import traceback

    try:
        folder = config.data_home() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"clipsearch {__version__}\nargv: {sys.argv!r}\n\n"
                        + "".join(traceback.format_exception(exc)), encoding="utf-8")
        return path
    except OSError:
        return None


def _version(value: bool) -> None:
    if value:
        out.print(f"clipsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False) -> None:
    """Search your photos by what is in them, with CLIP, on your own machine."""


class _RichProgress:
    """The indexer's progress, drawn on stderr; invisible when stderr is not a terminal."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[skipped]} skipped"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=err, transient=True, disable=quiet or not err.is_terminal)
        self.task = self.progress.add_task("index", total=None, skipped=0)

    def found(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def advance(self, done: int, skipped: int) -> None:
        self.progress.update(self.task, completed=done, skipped=skipped)


def _library(index: Path | None, model: str | None = None, device: str | None = None,
             precision: str | None = None):
    from clipsearch.library import Library

    return Library(index, model=model, device=device, precision=precision, notify=_note)


def _note(message: str) -> None:
    err.print(f"[dim]{escape(message)}…[/]")


@app.command()
@handles_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders or photos to index.", show_default=False)],
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="Skip files or folders matching this glob (repeatable).")] = None,
    follow_symlinks: Annotated[bool, typer.Option(
        "--follow-symlinks", help="Follow symbolic links (each folder is visited once).")] = False,
    include_hidden: Annotated[bool, typer.Option(
        "--include-hidden", help="Also index hidden files and folders.")] = False,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Forget all vectors and re-embed everything (to switch models).")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for another running index to finish instead of exiting with code 3.")] = False,
    max_megapixels: Annotated[int, typer.Option(
        "--max-megapixels", help="Skip images with more pixels than this (decompression-bomb guard).")] = 200,
    show_skipped: Annotated[bool, typer.Option(
        "--show-skipped", help="List every skipped file with its reason.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
    as_json: JsonOpt = False,
    index_path: IndexOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    ray_workers: RayWorkersOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_gpus: RayGpusOpt = 0.0,
) -> None:
    """Add new and changed photos under PATHS to the index; forget deleted ones."""
    from clipsearch import render

    lib = _library(index_path, model, device, precision)
    progress = _RichProgress(quiet or as_json)
    on_ray = None
    if ray or ray_address:
        from clipsearch.ray_executor import RayOptions

        on_ray = RayOptions(ray_address, ray_workers, ray_cpus, ray_gpus)
    with progress.progress:
        summary = lib.index(paths, exclude=exclude or (), follow_symlinks=follow_symlinks,
                            include_hidden=include_hidden, rebuild=rebuild, wait=wait,
                            max_pixels=max_megapixels * 1_000_000, progress=progress, ray=on_ray)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
        return
    if show_skipped and summary.skipped_files:
        out.print(render.skipped_lines(summary.skipped_files), end="", markup=False)
    if not quiet:
        err.print(render.index_summary(summary), end="", markup=False)


@app.command()
@handles_errors
def embed(
    paths: Annotated[list[Path], typer.Argument(help="Folders or photos to take a shard of.", show_default=False)],
    shard: Annotated[str, typer.Option(
        "--shard", help="Which part, as i/N: files whose path relative to PATHS hashes to i of N (0-based).",
        show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Shard folder to write (new or empty).",
                                          show_default=False)],
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", "-x", help="Skip files or folders matching this glob (repeatable).")] = None,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="Follow symbolic links.")] = False,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also hidden files and folders.")] = False,
    max_megapixels: Annotated[int, typer.Option(
        "--max-megapixels", help="Skip images with more pixels than this (decompression-bomb guard).")] = 200,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")] = False,
    as_json: JsonOpt = False,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model [default: $CLIPSEARCH_MODEL, else ViT-B-32-256:datacomp_s34b_b86k].",
        show_default=False)] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Embed one shard of PATHS into a folder, on any machine; `clipsearch merge` adds it to an index."""
    from clipsearch import shards

    progress = _RichProgress(quiet or as_json)
    with progress.progress:
        summary = shards.embed([str(p) for p in paths], shards.parse_shard(shard), out_dir, model=model, device=device,
                               precision=precision, exclude=tuple(exclude or ()), follow_symlinks=follow_symlinks,
                               include_hidden=include_hidden, max_pixels=max_megapixels * 1_000_000,
                               progress=progress, notify=_note)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
    elif not quiet:
        err.print(summary.line(), markup=False)


@app.command()
@handles_errors
def merge(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard folders written by `clipsearch embed`.",
                                                     show_default=False)],
    remap: Annotated[list[str] | None, typer.Option(
        "--remap", help="OLD=NEW: index shard paths under OLD as under NEW (the tree is mounted elsewhere here; "
        "repeatable).", show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for another running index to finish instead of exiting with code 3.")] = False,
    as_json: JsonOpt = False,
    index_path: IndexOpt = None,
) -> None:
    """Add shards to the index: one model only, the newest copy of a path wins, nothing is deleted."""
    summary = _library(index_path).merge(shard_dirs, remap=remap or (), wait=wait)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
    else:
        err.print(summary.line(), markup=False)


class Format(str, Enum):
    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    paths = "paths"


TopOpt = Annotated[int, typer.Option("--top", "-n", help="How many results at most.")]
WithinOpt = Annotated[list[Path] | None, typer.Option(
    "--in", help="Only photos under this folder (repeatable).", show_default=False)]
AfterOpt = Annotated[str | None, typer.Option(
    "--after", help="Taken on or after this date (YYYY, YYYY-MM, YYYY-MM-DD or ISO time; EXIF capture time, "
    "else file time).", show_default=False)]
BeforeOpt = Annotated[str | None, typer.Option(
    "--before", help="Taken before this date (same forms; --before 2020 means before 2020-01-01).",
    show_default=False)]
TypeOpt = Annotated[str | None, typer.Option(
    "--type", help="Only these formats, comma-separated: jpg,png,heic,…", show_default=False)]
MinWidthOpt = Annotated[int, typer.Option("--min-width", help="Only photos at least this many pixels wide.")]
SortOpt = Annotated[str, typer.Option("--sort", help="score (best first) or date (newest first).")]
MinScoreOpt = Annotated[float | None, typer.Option(
    "--min-score", help="Fixed cosine cutoff instead of the adaptive one (docs/search.md); -1 keeps everything.",
    show_default=False)]
FormatOpt = Annotated[Format, typer.Option(
    "--format", "-f", help="auto: a table on a terminal, 'score<TAB>path' lines in a pipe.")]
AsJsonQueryOpt = Annotated[bool, typer.Option("--json", help="Shortcut for --format json.")]
NullOpt = Annotated[bool, typer.Option("--null", "-0", help="Exact paths separated by NUL, for `xargs -0`.")]
PreviewOpt = Annotated[bool, typer.Option(
    "--preview", help="Show each result's picture in the terminal (kitty/iTerm2 images, else coloured blocks).")]
HtmlOpt = Annotated[Path | None, typer.Option(
    "--html", help="Also write a contact sheet of the results (thumbnails, scores, paths) to this HTML file.",
    show_default=False)]


@app.command()
@handles_errors
def query(
    text: Annotated[str | None, typer.Argument(
        help="What to look for: words, an example photo's path, or parts like \"beach + sunset - people\" "
        "and \"2:dog + cat\".", show_default=False)] = None,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", "-i", help="Find photos like this one (repeatable).", show_default=False)] = None,
    add: Annotated[list[str] | None, typer.Option(
        "--add", help="Add this text to the query (repeatable).", show_default=False)] = None,
    sub: Annotated[list[str] | None, typer.Option(
        "--sub", help="Subtract this text from the query (repeatable).", show_default=False)] = None,
    top: TopOpt = 20,
    within: WithinOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    types: TypeOpt = None,
    min_width: MinWidthOpt = 0,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Only photos with this tag (repeatable: all of them).", show_default=False)] = None,
    sort: SortOpt = "score",
    min_score: MinScoreOpt = None,
    fmt: FormatOpt = Format.auto,
    as_json: AsJsonQueryOpt = False,
    null: NullOpt = False,
    html: HtmlOpt = None,
    preview: PreviewOpt = False,
    index_path: IndexOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Find photos matching a text, example photos, or a mix. Exits 1 when nothing is relevant."""
    lib = _library(index_path, model, device, precision)
    found = lib.query(text, images=image or (), add=add or (), sub=sub or (), top=top,
                      **_filters(within, after, before, types, min_width), sort=sort, min_score=min_score,
                      tags=tag or ())
    _show(lib, found, "json" if as_json else fmt.value, null, html, text or "similar photos", preview)


@app.command()
@handles_errors
def similar(
    photo: Annotated[Path, typer.Argument(help="An indexed photo; finds the ones most like it.")],
    top: TopOpt = 20,
    within: WithinOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    types: TypeOpt = None,
    min_width: MinWidthOpt = 0,
    sort: SortOpt = "score",
    min_score: MinScoreOpt = None,
    fmt: FormatOpt = Format.auto,
    as_json: AsJsonQueryOpt = False,
    null: NullOpt = False,
    html: HtmlOpt = None,
    preview: PreviewOpt = False,
    index_path: IndexOpt = None,
) -> None:
    """Photos most like an indexed photo, from its stored vector (no model needed)."""
    lib = _library(index_path)
    found = lib.query(similar_to=photo, top=top, **_filters(within, after, before, types, min_width), sort=sort,
                      min_score=min_score)
    _show(lib, found, "json" if as_json else fmt.value, null, html, f"like {photo.name}", preview)


@app.command("tag")
@handles_errors
def tag_command(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Folders or photos to tag (indexed first) [default: the whole index].", show_default=False)] = None,
    labels_file: Annotated[Path | None, typer.Option(
        "--labels", help="Label file: one per line, 'label: variant; variant' for extra phrasings.",
        show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="A label (repeatable); replaces the built-in vocabulary.", show_default=False)] = None,
    template_set: Annotated[str, typer.Option(
        "--templates", help="Prompt templates to average: photo (short, default), imagenet (the CLIP paper's 80), "
        "none.")] = "photo",
    top: Annotated[int, typer.Option("--top", help="At most this many tags per photo.")] = 5,
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="A fixed cosine for every label instead of per-label calibration (docs/tagging.md).",
        show_default=False)] = None,
    write_xmp: Annotated[bool, typer.Option(
        "--write-xmp", help="Also write the tags to XMP sidecars (photo.jpg.xmp) for photo managers.")] = False,
    clear_xmp: Annotated[bool, typer.Option(
        "--clear-xmp", help="Remove clipsearch's tags from XMP sidecars (other keywords stay).")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Compute and report; write neither tags nor sidecars (new photos are still indexed).")
    ] = False,
    as_json: JsonOpt = False,
    index_path: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Tag photos zero-shot from label texts; a photo gets every label that clearly fits, or none."""
    from clipsearch import tagging

    if labels_file is not None:
        try:
            text = labels_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise _fail(f"{labels_file} is not UTF-8 text", 2) from None
        except OSError as exc:
            raise _fail(f"cannot read {labels_file}: {exc.strerror}", 2) from None
        chosen = tagging.parse_labels(text)
    elif label:
        chosen = tagging.parse_labels("\n".join(label))
    else:
        chosen = None
    lib = _library(index_path, model)
    progress = _RichProgress(as_json)
    with progress.progress:
        summary = lib.tag(paths or (), labels=chosen, template_set=template_set, top=top, threshold=threshold,
                          write_xmp=write_xmp, clear_xmp=clear_xmp, dry_run=dry_run, progress=progress)
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
        return
    top_counts = ", ".join(f"{k} {v}" for k, v in list(summary.counts.items())[:12])
    verb = "would tag" if dry_run else "tagged"
    err.print(f"{verb} {summary.tagged} of {summary.photos} photos with {len(summary.counts)} of {summary.labels} "
              f"labels ({summary.method} thresholds){': ' + top_counts if top_counts else ''}", markup=False)
    if write_xmp or clear_xmp:
        err.print(f"{'would change' if dry_run else 'changed'} {summary.sidecars_changed} XMP sidecars",
                  markup=False)
        for problem in summary.sidecar_errors or []:
            err.print(f"[yellow]skipped sidecar:[/] {escape(problem)}")


@app.command()
@handles_errors
def learn(
    name: Annotated[str, typer.Argument(help="The personal tag to learn, e.g. \"our dog Rex\".")],
    examples: Annotated[list[Path], typer.Option(
        "--examples", "-e", help="Example photos or folders of them (repeatable).", show_default=False)],
    negatives: Annotated[list[Path] | None, typer.Option(
        "--negatives", help="Photos that are NOT it (repeatable) [default: a sample of the index].",
        show_default=False)] = None,
    no_text: Annotated[bool, typer.Option(
        "--no-text", help="Do not use NAME as a text prior (for names CLIP cannot know, like 'Rex').")] = False,
    index_path: IndexOpt = None,
    model: ModelOpt = None,
) -> None:
    """Learn a personal tag from a few example photos; `clipsearch tag` applies it from then on."""
    lib = _library(index_path, model)
    probe = lib.learn(name, examples, negatives=negatives or (), use_text=not no_text)
    err.print(f"learnt {probe.name!r} from {probe.examples} example(s); run `clipsearch tag` to apply it",
              markup=False)


@app.command()
@handles_errors
def forget(
    name: Annotated[str, typer.Argument(help="The personal tag to forget.")],
    index_path: IndexOpt = None,
) -> None:
    """Forget a personal tag and remove it from every photo."""
    if not _library(index_path).forget(name):
        raise _fail(f"no personal tag named {name!r}", 2)
    err.print(f"forgot {name!r}", markup=False)


@app.command("tags")
@handles_errors
def tags_command(
    export: Annotated[str | None, typer.Option(
        "--export", help="Print every tag as csv or json (path, label, score, source).", show_default=False)] = None,
    as_json: JsonOpt = False,
    index_path: IndexOpt = None,
) -> None:
    """Tags in the index with how many photos carry each."""
    import csv

    lib = _library(index_path)
    if export is not None:
        rows = lib.all_tags()
        if export == "json":
            sys.stdout.write(json.dumps([{"path": p, "label": lab, "score": round(s, 6), "source": src}
                                         for p, lab, s, src in rows], ensure_ascii=False, indent=1) + "\n")
        elif export == "csv":
            writer = csv.writer(sys.stdout)
            writer.writerow(["path", "label", "score", "source"])
            writer.writerows((p, lab, f"{s:.6f}", src) for p, lab, s, src in rows)
        else:
            raise _fail("--export is csv or json", 2)
        return
    counts = lib.tag_counts()
    if as_json:
        out.print_json(json.dumps([{"label": lab, "source": src, "photos": n} for lab, src, n in counts]))
        return
    for lab, src, n in counts:
        out.print(f"{n:>7}  {lab}  [dim]{src}[/]")


@app.command()
@handles_errors
def duplicates(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Only photos under these folders [default: the whole index].", show_default=False)] = None,
    similar: Annotated[bool, typer.Option(
        "--similar", help="Also group photos of the same scene or burst (a third, looser tier).")] = False,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Minimum CLIP cosine for the near tier (confirmed by a difference hash).")] = 0.95,
    similar_threshold: Annotated[float, typer.Option(
        "--similar-threshold", help="Minimum CLIP cosine for the similar tier.")] = 0.90,
    window: Annotated[float, typer.Option(
        "--window", help="Similar photos must be taken within this many seconds (when both have a capture "
        "time).")] = 120.0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    as_json: AsJsonQueryOpt = False,
    to_remove: Annotated[bool, typer.Option(
        "--paths-to-remove", help="Print only the photos that are not the one to keep, one per line.")] = False,
    null: Annotated[bool, typer.Option("--null", "-0", help="With --paths-to-remove: NUL-separated.")] = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a contact sheet of every group to this HTML file.", show_default=False)] = None,
    index_path: IndexOpt = None,
) -> None:
    """Groups of copies: exact, near (resized, re-encoded, edited) and, with --similar, bursts. Deletes nothing.

    Exits 1 when there are no duplicates.
    """
    from clipsearch import render

    if fmt not in ("table", "json"):
        raise _fail("--format is table or json", 2)
    lib = _library(index_path)
    groups = lib.duplicates(paths or (), near_cosine=threshold, similar=similar, similar_cosine=similar_threshold,
                            similar_window_s=window)
    if to_remove or null:
        sep = "\0" if null else "\n"
        sys.stdout.write("".join(f"{m.path if null else render.display_path(m.path)}{sep}"
                                 for g in groups for m in g.remove))
    elif as_json or fmt == "json":
        sys.stdout.write(json.dumps({"schema_version": render.SCHEMA_VERSION,
                                     "groups": [g.as_dict() for g in groups]}, indent=2, ensure_ascii=False) + "\n")
    elif groups:
        out.print(render.duplicates_table(groups))
    if html is not None:
        thumbs = {m.id: lib.thumbnail_of(m.id, m.path, m.mtime_ns) for g in groups for m in g.members}
        html.write_text(render.duplicates_html(groups, thumbs), encoding="utf-8")
    if groups:
        err.print(render.duplicates_summary(groups), end="", markup=False)
    else:
        err.print("no duplicates found", markup=False)
        raise typer.Exit(1)


def _previews(lib: Library, results: list[SearchResult]) -> None:
    """Each result as a line of text and its picture; only ever drawn on a terminal."""
    from clipsearch import render, terminal_images

    kind = terminal_images.protocol()
    cols = max(16, min(32, out.width // 3))
    for r in results:
        out.print(f"[bold]{r.rank}[/]  {r.score:.3f}  {escape(render.short_path(r.path))}  [dim]{r.date[:10]}[/]")
        thumb = lib.thumbnail(r)
        if thumb is None:
            out.print("[dim](no preview)[/]")
        elif kind == "blocks" and not out.no_color:
            out.print(terminal_images.blocks(thumb, cols), end="")
        elif kind in ("kitty", "iterm"):
            draw = terminal_images.kitty if kind == "kitty" else terminal_images.iterm
            out.file.write(draw(thumb, cols))
            out.file.flush()


def _filters(within: list[Path] | None, after: str | None, before: str | None, types: str | None,
             min_width: int) -> dict[str, Any]:
    from clipsearch.query import parse_date

    return {"within": within or (), "after": parse_date(after) if after else None,
            "before": parse_date(before) if before else None,
            "formats": [t for t in (types or "").split(",") if t.strip()], "min_width": min_width}


def _show(lib: Library, found: QueryResult, fmt: str, null: bool, html: Path | None, title: str,
          preview: bool = False) -> None:
    from clipsearch import render

    results, ranking = found.results, found.ranking
    if null:
        sys.stdout.write(render.results_paths(results, null=True))
    elif fmt == "json":
        sys.stdout.write(render.results_json(results, {"terms": [t.as_dict() for t in found.terms]},
                                             ranking.as_dict()))
    elif fmt == "jsonl":
        sys.stdout.write(render.results_jsonl(results))
    elif fmt == "paths":
        sys.stdout.write(render.results_paths(results))
    elif preview and out.is_terminal:
        _previews(lib, results)
    elif fmt == "table" or (fmt == "auto" and out.is_terminal):
        if results:
            out.print(render.results_table(results))
    else:
        sys.stdout.write(render.results_plain(results))
    sys.stdout.flush()
    if html is not None:
        thumbs = [lib.thumbnail(r) for r in results]
        meta = f"{len(results)} results · {render.cutoff_note(ranking) or 'no cutoff applied'}"
        html.write_text(render.contact_sheet(results, thumbs, title, meta), encoding="utf-8")
    note = render.cutoff_note(ranking)
    if ranking.cut and note and err.is_terminal:
        err.print(f"[dim]{escape(note)}[/]")
    if not results:
        err.print(render.nothing_found(ranking), markup=False)
        raise typer.Exit(1)


@app.command()
@handles_errors
def status(
    show_skipped: Annotated[bool, typer.Option(
        "--show-skipped", help="List every skipped file with its reason.")] = False,
    as_json: JsonOpt = False,
    index_path: IndexOpt = None,
) -> None:
    """Where the index is, its model, how many photos, what was skipped, the last run."""
    from clipsearch import render

    lib = _library(index_path)
    st = lib.status()
    if as_json:
        payload = st.as_dict()
        if show_skipped:
            payload["skipped_files"] = [{"path": p, "reason": r, "detail": d} for p, r, d in lib.skipped()]
        out.print_json(json.dumps(payload))
        return
    out.print(render.status_text(st), end="", markup=False)
    if show_skipped:
        out.print(render.skipped_lines(lib.skipped()), end="", markup=False)


@models_app.command("list")
@handles_errors
def models_list(as_json: JsonOpt = False) -> None:
    """Recommended models: size, CPU speed class, ImageNet zero-shot accuracy, whether cached here."""
    from clipsearch import models, render

    cached = {}
    for e in models.CATALOG:
        try:
            cached[e.name] = models.cached_weights(models.parse(e.name)) is not None
        except ClipsearchError:
            cached[e.name] = False
    if as_json:
        out.print_json(json.dumps([{**e.__dict__, "cached": cached[e.name],
                                    "default": e.name == config.DEFAULT_MODEL} for e in models.CATALOG]))
        return
    out.print(render.models_table(models.CATALOG, cached, config.DEFAULT_MODEL))
    out.print(f"\nDefault: {config.DEFAULT_MODEL}. ImageNet: zero-shot top-1 accuracy.\n"
              "Any open_clip model works too: --model ARCH:PRETRAINED, local-dir:/path,\n"
              "or CONFIG.json:CHECKPOINT.", markup=False)


@models_app.command("download")
@handles_errors
def models_download(
    model: Annotated[str, typer.Argument(help="Model to fetch, e.g. ViT-B-32-256:datacomp_s34b_b86k.")],
) -> None:
    """Download a model's weights into the Hugging Face cache (needs network once)."""
    from clipsearch import models

    spec = models.parse(model)
    path = models.resolve_weights(spec, download=True, notify=_note)
    out.print(f"{spec.name}: {path}", markup=False)
    out.print(f"sha256 {models.sha256_of(path)}", markup=False)


@models_app.command("info")
@handles_errors
def models_info(
    model: Annotated[str | None, typer.Argument(
        help="Model to describe [default: the one the index or $CLIPSEARCH_MODEL selects].",
        show_default=False)] = None,
    index_path: IndexOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which model is selected, where its weights are, and how this machine would run it."""
    from clipsearch import embedder, models

    spec = _library(index_path, model).model_spec()
    weights = models.cached_weights(spec)
    dev = embedder.pick_device(device)
    info: dict[str, object] = {
        "model": spec.name, "kind": spec.kind,
        "weights": str(weights) if weights else None,
        "weights_sha256": models.sha256_of(weights) if weights else None,
        "device": dev, "precision": embedder.pick_precision(precision, dev),
        **embedder.runtime_summary(),
    }
    if as_json:
        out.print_json(json.dumps(info))
        return
    for key, value in info.items():
        shown = value if value is not None else "not on this machine (clipsearch models download MODEL)"
        out.print(f"{key + ':':16}{shown}", markup=False)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted")
        sys.exit(130)
