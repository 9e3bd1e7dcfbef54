"""`query` and `similar`: parse, search, render in the format asked for."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clipsearch.cli.common import (
    check_writable,
    err,
    escape,
    handles_errors,
    library,
    out,
    print_table,
    write_user_file,
)
from clipsearch.cli.options import PATH, device_option, index_option, model_option, precision_option

if TYPE_CHECKING:
    from clipsearch.library import Library
    from clipsearch.search.ranking import QueryResult, SearchResult

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("auto", "table", "json", "jsonl", "paths")


def _result_options(fn: F) -> F:
    """Filters and output options that `query` and `similar` share (applied bottom-up)."""
    options = [
        click.option("--top", "-n", type=int, default=20, show_default=True, help="How many results at most."),
        click.option("--in", "within", type=PATH, multiple=True, help="Only photos under this folder (repeatable)."),
        click.option("--after", help="Taken on or after this date (YYYY, YYYY-MM, YYYY-MM-DD or ISO time; EXIF "
                     "capture time, else file time)."),
        click.option("--before", help="Taken before this date (same forms; --before 2020 means before "
                     "2020-01-01)."),
        click.option("--type", "types", help="Only these formats, comma-separated: jpg,png,heic,mp4,…; or "
                     "'video' / 'photo'."),
        click.option("--min-width", type=int, default=0, help="Only photos at least this many pixels wide."),
        click.option("--camera", help="Only photos whose camera (EXIF make and model) contains this, e.g. "
                     "'iphone 13' (case ignored)."),
        click.option("--near", metavar="LAT,LON,KM", help="Only photos taken within KM of this place (decimal "
                     "degrees, from the photos' EXIF GPS), e.g. 48.858,2.294,5."),
        click.option("--sort", type=click.Choice(["score", "date"]), default="score", show_default=True,
                     help="score (best first) or date (newest first)."),
        click.option("--min-score", type=float, help="Fixed cosine cutoff instead of the adaptive one "
                     "(docs/search.md); -1 keeps everything."),
        click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="auto: a table on a terminal, 'score<TAB>path' lines in a pipe."),
        click.option("--json", "as_json", is_flag=True, help="Shortcut for --format json."),
        click.option("--null", "-0", "null", is_flag=True, help="Exact paths separated by NUL, for `xargs -0`."),
        click.option("--html", type=PATH, help="Also write a contact sheet of the results (thumbnails, scores, "
                     "paths) to this HTML file."),
        click.option("--copy-to", type=PATH, metavar="DIR", help="Also copy the results into DIR (made if "
                     "missing; a name taken there gets ' (2)')."),
        click.option("--link-to", type=PATH, metavar="DIR", help="Also symlink the results into DIR (made if "
                     "missing)."),
        click.option("--open", "open_best", is_flag=True, help="Also open the best result in the desktop's "
                     "viewer."),
        click.option("--preview", is_flag=True, help="Show each result's picture in the terminal (kitty/iTerm2 "
                     "images, else coloured blocks)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command()
@click.argument("text", required=False)
# A string, not a click.Path: pathlib would fold "http://host/x.jpg" into "http:/host/x.jpg" before the
# library could say that an address is not a file.
@click.option("--image", "-i", type=click.STRING, multiple=True, help="Find photos like this one (repeatable).")
@click.option("--add", multiple=True, help="Add this text to the query (repeatable).")
@click.option("--sub", multiple=True, help="Subtract this text from the query (repeatable).")
@_result_options
@click.option("--tag", multiple=True, help="Only photos with this tag (repeatable: all of them).")
@click.option("--moments", "all_moments", is_flag=True, help="List every matching moment of a video, not only "
              "its best one.")
@index_option
@model_option
@device_option
@precision_option
@handles_errors
def query(text: str | None, image: tuple[str, ...], add: tuple[str, ...], sub: tuple[str, ...], top: int,
          within: tuple[Path, ...], after: str | None, before: str | None, types: str | None, min_width: int,
          camera: str | None, near: str | None, sort: str, min_score: float | None, fmt: str, as_json: bool,
          null: bool,
          html: Path | None, copy_to: Path | None, link_to: Path | None, open_best: bool, preview: bool,
          tag: tuple[str, ...], all_moments: bool, index_path: Path | None, model: str | None,
          device: str | None, precision: str | None) -> None:
    """Find photos matching a text, example photos, or a mix. Exits 1 when nothing is relevant.

    TEXT: words, an example photo's path, or parts like "beach + sunset - people" and "2:dog + cat".
    """
    _check_output(fmt, as_json, null, copy_to, link_to)
    check_writable(html, "the contact sheet")
    lib = library(index_path, model, device, precision)
    found = lib.query(text, images=image, add=add, sub=sub, top=top, sort=sort, min_score=min_score, tags=tag,
                      all_moments=all_moments, **_filters(within, after, before, types, min_width, camera, near))
    for line in found.notes:  # e.g. a Korean query against an English-only model
        err.print(f"note: {escape(line)}")
    _show(lib, found, "json" if as_json else fmt, null, html, text or "similar photos", preview)
    _act(found.results, copy_to, link_to, open_best)


@click.command()
@click.argument("photo", type=PATH)
@_result_options
@index_option
@handles_errors
def similar(photo: Path, top: int, within: tuple[Path, ...], after: str | None, before: str | None,
            types: str | None, min_width: int, camera: str | None, near: str | None, sort: str,
            min_score: float | None, fmt: str, as_json: bool, null: bool, html: Path | None, copy_to: Path | None,
            link_to: Path | None, open_best: bool, preview: bool, index_path: Path | None) -> None:
    """Photos most like PHOTO, an indexed photo, from its stored vector (no model needed).

    PHOTO may be a video's moment, VIDEO#t=SECONDS: the kept frame nearest that time is the query.
    """
    _check_output(fmt, as_json, null, copy_to, link_to)
    check_writable(html, "the contact sheet")
    lib = library(index_path)
    found = lib.query(similar_to=photo, top=top, sort=sort, min_score=min_score,
                      **_filters(within, after, before, types, min_width, camera, near))
    _show(lib, found, "json" if as_json else fmt, null, html, f"like {photo.name}", preview)
    _act(found.results, copy_to, link_to, open_best)


def _check_output(fmt: str, as_json: bool, null: bool, copy_to: Path | None, link_to: Path | None) -> None:
    """One output format (-0 prints exact paths, so it cannot also be JSON or a table); target folders
    made now, so that a bad one is an error before the search."""
    from clipsearch.cli import actions

    if null and (as_json or fmt != "auto"):
        raise click.UsageError(f"-0/--null prints NUL-separated paths; it does not combine with "
                               f"{'--json' if as_json else '--format ' + fmt}")
    actions.prepare(copy_to, "--copy-to")
    actions.prepare(link_to, "--link-to")


def _act(results: list[SearchResult], copy_to: Path | None, link_to: Path | None, open_best: bool) -> None:
    from clipsearch.cli import actions

    if copy_to is not None:
        actions.put([r.path for r in results], copy_to, link=False)
    if link_to is not None:
        actions.put([r.path for r in results], link_to, link=True)
    if open_best and results:
        actions.open_file(results[0].path)


def _filters(within: tuple[Path, ...], after: str | None, before: str | None, types: str | None,
             min_width: int, camera: str | None, near: str | None) -> dict[str, Any]:
    from clipsearch.search.query import parse_date

    return {"within": within, "after": parse_date(after) if after else None,
            "before": parse_date(before) if before else None,
            "formats": [t for t in (types or "").split(",") if t.strip()], "min_width": min_width,
            "camera": camera, "near": near}


def _show(lib: Library, found: QueryResult, fmt: str, null: bool, html: Path | None, title: str,
          preview: bool = False) -> None:
    from clipsearch.cli import render

    results, ranking = found.results, found.ranking
    marks = ranking.method == "min-score"  # more than the relevant ones were asked for: say which are
    if null:
        sys.stdout.write(render.results_paths(results, null=True))
    elif fmt == "json":
        sys.stdout.write(render.results_json(results, {"terms": [t.as_dict() for t in found.terms]},
                                             ranking.as_dict(), relevance=marks))
    elif fmt == "jsonl":
        sys.stdout.write(render.results_jsonl(results, relevance=marks))
    elif fmt == "paths":
        sys.stdout.write(render.results_paths(results))
    elif preview and out.is_terminal:
        _previews(lib, results)
    elif fmt == "table" or (fmt == "auto" and sys.stdout.isatty() and out.is_terminal):
        if results:
            print_table(render.results_table(results, out.width if out.is_terminal else None))
    else:
        sys.stdout.write(render.results_plain(results))
    sys.stdout.flush()
    if html is not None:
        thumbs = [lib.thumbnail(r) for r in results]
        meta = f"{len(results)} results · {render.cutoff_note(ranking) or 'no cutoff applied'}"
        write_user_file(html, render.contact_sheet(results, thumbs, title, meta), "the contact sheet")
    note = render.cutoff_note(ranking)
    if ranking.cut and note and sys.stderr.isatty() and results:
        err.print(f"[dim]{escape(note)}[/]")
    if not results:
        # A person at a terminal still sees the closest few, dimmed under a line that says they do
        # not stand out; pipes, paths and -0 get nothing, so "exit 1, empty stdout" keeps its meaning.
        if (ranking.closest and fmt in ("auto", "table") and not null and sys.stdout.isatty()
                and out.is_terminal):
            out.print(escape(render.closest_heading(ranking)))
            out.print(render.results_table(ranking.closest), style="dim")
        else:
            sys.stderr.write(render.nothing_found(ranking) + "\n")
        raise click.exceptions.Exit(1)


def _previews(lib: Library, results: list[SearchResult]) -> None:
    """Each result as a line of text and its picture; only ever drawn on a terminal."""
    from clipsearch.cli import render, terminal_images

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
