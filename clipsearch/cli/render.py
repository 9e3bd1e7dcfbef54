"""Turning library results into text for people (rich tables) and for pipes (JSON, paths).

Functions here build strings and rich renderables; printing them is the cli package's job. Rich is
imported by the functions that build tables, so output for pipes does not pay for it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from clipsearch.formats import NO_DECODER, NO_DECODER_DETAIL
from clipsearch.paths import display as display_path

if TYPE_CHECKING:
    from rich.table import Table

    from clipsearch.index.roots import Forgotten
    from clipsearch.ingest.pipeline import IndexSummary
    from clipsearch.library import Status
    from clipsearch.model.names import CatalogEntry
    from clipsearch.search.duplicates import Group
    from clipsearch.search.ranking import Ranking, SearchResult

SCHEMA_VERSION = 1


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def results_table(results: Sequence[SearchResult], width: int | None = None) -> Table:
    """The results in `width` cells (None: as wide as they are): size and date give way before paths."""
    from clipsearch.cli import fit

    def build(dropped: frozenset[str], path_text: Callable[[str], str]) -> Table:
        from rich.table import Table
        from rich.text import Text

        table = Table(show_edge=False, pad_edge=False, header_style="bold", expand=False)
        table.add_column("#", justify="right", style="dim", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("path", overflow="fold")
        for name in ("date", "size"):
            if name not in dropped:
                table.add_column(name, justify="right" if name == "size" else "left", style="dim", no_wrap=True)
        for r in results:
            # The link carries the real path; the text is shortened (relative, ~, then from the left).
            link = file_link(r)
            extra = {"date": r.date[:10], "size": human_bytes(r.size)}
            shown = path_text(r.path) + ("" if r.time is None else f" @ {clock(r.time)}")
            table.add_row(str(r.rank), f"{r.score:.3f}", Text(shown, style=f"link {link}"),
                          *(v for k, v in extra.items() if k not in dropped))
        return table

    return fit.fit(build, ("size", "date"), width)


def clock(seconds: float) -> str:
    """A video's moment as m:ss.s (h:mm:ss past an hour)."""
    minutes, secs = divmod(seconds, 60)
    if minutes >= 60:
        return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{int(secs):02d}"
    return f"{int(minutes)}:{secs:04.1f}"


def file_link(r: SearchResult) -> str:
    """A file:// address; a video's carries its moment as a media fragment (#t=SECONDS)."""
    link = "file://" + quote(os.fsencode(r.path))
    return link if r.time is None else f"{link}#t={r.time:.3f}"


def short_path(path: str) -> str:
    shown = display_path(path)
    home = str(Path.home())
    return "~" + shown[len(home):] if shown.startswith(home + os.sep) else shown


def results_plain(results: Sequence[SearchResult]) -> str:
    """score<TAB>path lines (a video's adds <TAB>its moment in seconds): the default in a pipe."""
    return "".join(f"{r.score:.4f}\t{display_path(r.path)}" + ("" if r.time is None else f"\t{r.time:.3f}")
                   + "\n" for r in results)


def results_paths(results: Sequence[SearchResult], null: bool = False) -> str:
    # With -0 the exact OS path is wanted (xargs -0 opens it), escaped names would not open.
    if null:
        return "".join(f"{r.path}\0" for r in results)
    return "".join(f"{display_path(r.path)}\n" for r in results)


def results_json(results: Sequence[SearchResult], query: Mapping[str, object],
                 cutoff: Mapping[str, object] | None = None, relevance: bool = False) -> str:
    """`relevance`: mark each result `relevant`, for output that shows more than the relevant ones."""
    payload = {"schema_version": SCHEMA_VERSION, "query": query, "cutoff": cutoff,
               "results": [{**r.as_dict(relevance), "path": display_path(r.path)} for r in results]}
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def results_jsonl(results: Sequence[SearchResult], relevance: bool = False) -> str:
    return "".join(json.dumps({**r.as_dict(relevance), "path": display_path(r.path)}, ensure_ascii=False) + "\n"
                   for r in results)


def cutoff_note(ranking: Ranking) -> str:
    if ranking.method.startswith("zero-shot"):
        if not ranking.cut:
            return "relevance: the query describes each photo better than the alternatives"
        return (f"{ranking.cut} more that don't stand out (other descriptions fit them better); "
                "--min-score -1 shows them")
    if ranking.cutoff is None:
        return ""
    how = "your --min-score" if ranking.method == "min-score" else "the relevance cutoff"
    if not ranking.cut:
        return f"{how}: score ≥ {ranking.cutoff:.3f}"
    return (f"{ranking.cut} more below {how} (score < {ranking.cutoff:.3f}); "
            "--min-score -1 shows them")


def nothing_found(ranking: Ranking) -> str:
    if ranking.method.startswith("zero-shot") and (ranking.cut or ranking.closest):
        return ("nothing stands out for this query (other descriptions fit every photo better); "
                "--min-score -1 shows the closest photos anyway")
    if ranking.cutoff is not None and (ranking.cut or ranking.closest):
        return (f"nothing passed the relevance cutoff (score ≥ {ranking.cutoff:.3f}); "
                "--min-score -1 shows the closest photos anyway")
    return "no photos match"


def closest_heading(ranking: Ranking) -> str:
    """The one line above the closest photos a terminal shows when none is relevant."""
    return (f"None of these stand out for this query; the closest {len(ranking.closest)} "
            "(--min-score -1 shows more):")


def index_summary(s: IndexSummary, wall: float | None = None) -> str:
    """The run in a line or three; `wall` is what the user waited (scan and FAISS refresh included)."""
    parts = [f"{s.new} new", f"{s.changed} changed", f"{s.moved} moved", f"{s.removed} removed",
             f"{s.unchanged} unchanged", f"{sum(s.skipped.values())} skipped"]
    line = ", ".join(parts)
    # The model's load is often most of a small run: reported apart, so the rate means something.
    timing = (f" (model load {s.model_load_seconds:.1f}s, embedding {plural(s.embedded, 'photo')} "
              f"{s.seconds - s.model_load_seconds:.1f}s, {s.images_per_second:.1f} images/s)") if s.embedded else ""
    total = s.seconds if wall is None else wall
    out = f"Indexed in {total:.1f}s{timing}: {line}. {plural(s.total, 'photo')} in the index.\n"
    if s.videos:
        out += f"Videos: {plural(s.videos, 'video')} indexed, {plural(s.video_frames, 'moment')} kept.\n"
    for path, note in s.video_notes:
        out += f"Partly decoded, the frames before kept: {short_path(path)}: {note}.\n"
    if s.skipped.get(NO_DECODER):
        out += (f"{plural(s.skipped[NO_DECODER], 'video')} skipped: no video decoder; "
                f"{NO_DECODER_DETAIL}.\n")
    if s.skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in s.skipped.most_common())
        out += f"Skipped ({reasons}) — `clipsearch status --show-skipped` lists them.\n"
    if s.reembedded:
        out += (f"Embedded again: {plural(s.reembedded, 'photo')} whose vectors came from an image model built "
                "without torch that did not match open_clip when checked.\n")
    if not (s.new or s.changed or s.unchanged or s.moved or s.reembedded):
        why = "; ".join(f"{short_path(p)}: {r}" + (f" ({d})" if d else "") for p, r, d in s.skipped_files[:3])
        out += (f"Nothing was indexed: {why}.\n" if why else "Nothing was indexed: no photos (jpg, png, heic, "
                "webp, tiff, raw, …) were found; hidden files and folders need --include-hidden.\n")
    if s.vanished_roots:
        gone = ", ".join(short_path(r) for r in s.vanished_roots)
        out += f"No longer there, so forgotten: {gone}.\n"
    return out


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 photo", "2 photos": the count with its noun."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def forget_summary(f: Forgotten) -> str:
    lines = [f"nothing in the index at or under {short_path(u)}\n" for u in f.unknown]
    if f.photos or f.skipped or f.roots or not f.unknown:
        lines.append(f"Forgot {plural(f.photos, 'photo')}"
                     + (f" and {f.skipped} skipped {'file' if f.skipped == 1 else 'files'}" if f.skipped else "")
                     + (f"; no longer indexing {', '.join(short_path(r) for r in f.roots)}" if f.roots else "")
                     + ". The files themselves were not touched.\n")
    lines += [f"note: {short_path(p)} is still inside {short_path(r)}, which stays indexed: the next `clipsearch "
              f"index` adds it again (`--exclude` leaves it out)\n" for p, r in f.still_under]
    return "".join(lines)


def skipped_lines(rows: Sequence[tuple[str, str, str]]) -> str:
    return "".join(f"{reason}\t{display_path(path)}\t{detail}\n" for path, reason, detail in rows)


def status_text(st: Status) -> str:
    model = st.model.describe() if st.model else "none yet"
    text = ("ready (text queries load no model)" if st.text_model
            else "being prepared in the background (text queries load the model until then)"
            if "text" in st.exporting else "none (text queries load the model)")
    lines = [
        f"index:        {st.path}",
        f"model:        {model}",
        f"photos:       {st.images}",
        *([f"videos:       {st.videos} ({plural(st.video_frames, 'moment')} kept)"] if st.videos else []),
        f"skipped:      {sum(st.skipped.values())}"
        + (f" ({', '.join(f'{r}: {n}' for r, n in st.skipped.items())})" if st.skipped else ""),
        f"size on disk: {human_bytes(st.bytes_on_disk)}",
        f"vector cache: {st.vector_cache}",
        f"text model:   {text}",
        "image model:  " + ("ready (image queries of new photos, and index runs of a few, load no model)"
                            if st.image_model else "none (new photos are embedded by the model)"),
        *([f"to re-embed:  {plural(st.reembed, 'photo')}: {st.reembed_reason}"] if st.reembed else []),
        f"last run:     {st.last_run_at or 'never'}",
    ]
    lines += [f"{'roots:' if i == 0 else '':14}{short_path(r)}" for i, r in enumerate(st.roots)]
    return "\n".join(lines) + "\n"


def models_table(entries: Sequence[CatalogEntry], cached: dict[str, bool], default: str) -> Table:
    """Fits 80 columns; each model's note is in `models list --json`."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("model", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("CPU speed", no_wrap=True)
    table.add_column("ImageNet", justify="right", no_wrap=True)
    table.add_column("languages")
    table.add_column("here", no_wrap=True)
    for e in entries:
        name = Text(e.name, style="bold" if e.name == default else "")
        imagenet = "-" if e.imagenet_zero_shot is None else f"{e.imagenet_zero_shot:.1f}%"
        table.add_row(name, f"{e.size_mb} MB", e.speed, imagenet, e.languages, "cached" if cached.get(e.name) else "-")
    return table


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clipsearch: {title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.2em; }} .meta {{ color: #666; margin-bottom: 1em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
img {{ width: 100%; height: 200px; object-fit: contain; background: #eee; }}
figcaption {{ font-size: 12px; word-break: break-all; }} .score {{ font-weight: 600; }}
figure.keep {{ border: 3px solid #2a7a2a; }} h2 {{ font-size: 1em; margin-top: 1.5em; }}
</style></head><body>
<h1>{title}</h1><div class="meta">{meta}</div>
{body}
</body></html>
"""


# Bidirectional controls (U+202A-202E, U+2066-2069, U+200E/F, U+061C) reorder the text around them:
# a name can show "photo_gpj.exe" as "photo_exe.jpg". In HTML they are shown as escapes instead.
_BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}


def html_path(path: str) -> str:
    """A path for an HTML caption: escaped, with direction overrides visible as \\u202e and the like."""
    import html

    shown = "".join(f"\\u{ord(c):04x}" if ord(c) in _BIDI else c for c in display_path(path))
    return html.escape(shown)


def contact_sheet(results: Sequence[SearchResult], thumbs: Sequence[Path | None], title: str, meta: str) -> str:
    """A self-contained HTML page (thumbnails inlined) that opens in any browser, no server."""
    import base64
    import html

    figures = []
    for r, thumb in zip(results, thumbs, strict=True):
        if thumb is not None:
            data = base64.b64encode(thumb.read_bytes()).decode("ascii")
            img = f'<img src="data:image/jpeg;base64,{data}" alt="">'
        else:
            img = '<div class="missing">no preview</div>'
        link = file_link(r)
        moment = "" if r.time is None else f" · at {clock(r.time)}"
        figures.append(
            f'<figure><a href="{html.escape(link)}">{img}</a><figcaption><span class="score">#{r.rank} '
            f'{r.score:.3f}</span> · {html.escape(r.date[:10])}{moment}<br>{html_path(r.path)}'
            "</figcaption></figure>")
    body = '<div class="grid">\n' + "\n".join(figures) + "\n</div>"
    return _HTML.format(title=html.escape(title), meta=html.escape(meta), body=body)


def duplicates_table(groups: Sequence[Group], width: int | None = None) -> Table:
    """Groups in `width` cells (None: as wide as they are); the paths are the last to give way."""
    from clipsearch.cli import fit

    columns = ("group", "tier", "keep", "path", "pixels", "date", "size", "cosine")

    def build(dropped: frozenset[str], path_text: Callable[[str], str]) -> Table:
        from rich.table import Table
        from rich.text import Text

        table = Table(show_edge=False, pad_edge=False, header_style="bold")
        shown = [c for c in columns if c not in dropped]
        for name in shown:
            right = name in ("group", "pixels", "size", "cosine")
            table.add_column(name, justify="right" if right else "left", no_wrap=name != "path", overflow="fold")
        for n, g in enumerate(groups, start=1):
            for i, m in enumerate(sorted(g.members, key=lambda m: m.id != g.keep.id)):
                when = m.taken_at or dt.datetime.fromtimestamp(m.mtime_ns / 1e9).isoformat()  # file time, else
                cells = {"group": str(n) if i == 0 else "", "tier": g.tier if i == 0 else "",
                         "keep": "keep" if m.id == g.keep.id else "",
                         "path": Text(path_text(m.path), style="bold" if m.id == g.keep.id else ""),
                         "pixels": f"{m.width}×{m.height}", "date": when[:10], "size": human_bytes(m.size),
                         "cosine": f"{g.scores.get(m.id, 1.0):.3f}"}
                table.add_row(*(cells[c] for c in shown), end_section=i == len(g.members) - 1)
        return table

    return fit.fit(build, ("cosine", "size", "pixels", "date", "tier"), width)


def duplicates_summary(groups: Sequence[Group]) -> str:
    from collections import Counter

    tiers = Counter(g.tier for g in groups)
    # Similar shots are different pictures of one scene: for a person to choose, not copies that could go.
    copies = [m for g in groups if g.tier != "similar" for m in g.remove]
    alike = sum(len(g.remove) for g in groups if g.tier == "similar")
    parts = ", ".join(f"{n} {tier}" for tier, n in tiers.items())
    choose = f"; {plural(alike, 'similar shot')} to choose from" if alike else ""
    return (f"{plural(len(groups), 'group')} ({parts}): {plural(len(copies), 'copy', 'copies')} could go, "
            f"{human_bytes(sum(m.size for m in copies))}{choose}. Nothing was deleted.\n")


def duplicates_html(groups: Sequence[Group], thumbs: dict[int, Path | None]) -> str:
    """One section per group, the photo to keep first and marked."""
    import base64
    import html

    sections = []
    for n, g in enumerate(groups, start=1):
        figures = []
        for m in sorted(g.members, key=lambda m: m.id != g.keep.id):
            thumb = thumbs.get(m.id)
            img = (f'<img src="data:image/jpeg;base64,{base64.b64encode(thumb.read_bytes()).decode()}" alt="">'
                   if thumb is not None else '<div class="missing">no preview</div>')
            mark = "keep" if m.id == g.keep.id else "copy"
            link = html.escape("file://" + quote(os.fsencode(m.path)))
            figures.append(f'<figure class="{mark}"><a href="{link}">{img}</a><figcaption><b>{mark}</b> · '
                           f'{m.width}×{m.height} · {human_bytes(m.size)}<br>{html_path(m.path)}</figcaption></figure>')
        sections.append(f"<h2>Group {n}: {g.tier}</h2><div class=\"grid\">{''.join(figures)}</div>")
    return _HTML.format(title="duplicates", meta=html.escape(duplicates_summary(groups).strip()),
                        body="\n".join(sections))
