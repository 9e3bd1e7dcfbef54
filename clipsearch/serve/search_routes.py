"""Searching from the page: text as you type, filters, an example image, browsing without a query."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from clipsearch import paths, photos
from clipsearch.errors import UsageError
from clipsearch.formats import IMAGE_EXTENSIONS
from clipsearch.serve.photo_routes import indexed_row
from clipsearch.serve.replies import json_reply, row_dict

if TYPE_CHECKING:
    from clipsearch.serve.app import Gallery

PAGE_SIZE = 60
MAX_RESULTS = 5000
MAX_UPLOAD = 40 * 1024 * 1024
EXAMPLES_KEPT = 20


# --- searching ------------------------------------------------------------------------------------


def _result_dict(r: Any) -> dict[str, object]:
    return {"id": r.id, "score": round(r.score, 4), "name": os.path.basename(r.path),
            "path": paths.display(r.path), "date": r.date, "width": r.width, "height": r.height,
            "format": r.format, "size": r.size, "type": getattr(r, "kind", "photo"),
            "time": getattr(r, "time", None)}


def _filters(request: Request) -> dict[str, Any]:
    from clipsearch.search.query import parse_date

    q = request.query_params
    try:
        min_width = int(q.get("min_width") or 0)
        after = parse_date(q["after"]) if q.get("after") else None
        before = parse_date(q["before"], end=True) if q.get("before") else None
    except ValueError as exc:
        raise UsageError(f"bad filter: {exc}") from None
    folder = (q.get("folder") or "").strip()
    return {"within": [folder] if folder else [], "after": after, "before": before,
            "formats": [t for t in (q.get("type") or "").split(",") if t.strip()], "min_width": min_width,
            "sort": q.get("sort") or "score", "tags": [t for t in q.getlist("tag") if t.strip()],
            # all=1: every photo in score order, relevant or not, as the CLI's --min-score -1
            "min_score": -1.0 if q.get("all") == "1" else None}


def _paging(request: Request) -> tuple[int, int]:
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
        limit = min(200, max(1, int(request.query_params.get("limit") or PAGE_SIZE)))
    except ValueError:
        raise UsageError("offset and limit are numbers") from None
    return offset, min(limit, max(0, MAX_RESULTS - offset))


def _text_only(text: str) -> str:
    """The search box takes words, not file paths: a request must not make the server read a file.

    (The CLI reads an example photo named in a query; here an example is dropped or pasted instead.)
    """
    from clipsearch.search import query as query_mod

    for term in query_mod.parse(text, frozenset()):
        if os.path.splitext(term.value)[1].lower() in IMAGE_EXTENSIONS or term.value.startswith(("/", "~")):
            raise UsageError(f"{term.value!r} looks like a file path; drop or paste the photo to search by it")
    return text


def _answer(found: Any, offset: int, limit: int, started: float, **extra: object) -> dict[str, object]:
    """A page of results with the relevance line as the CLI's contact sheet shows it."""
    from clipsearch.cli import render

    ranking = found.ranking
    page = found.results[offset:offset + limit]
    more = len(found.results) > offset + limit
    count = f"{offset + limit}+" if more else str(len(found.results))
    line = f"{count} results · {render.cutoff_note(ranking) or 'no cutoff applied'}"
    return {"results": [_result_dict(r) for r in page], "offset": offset, "more": more, "relevance": line,
            "cutoff": ranking.as_dict(), "nothing": render.nothing_found(ranking) if not found.results else None,
            "terms": [t.as_dict() for t in found.terms if t.kind == "text"] or None,
            "server_ms": round((time.perf_counter() - started) * 1000, 2), **extra}


def search(gallery: Gallery, params: dict[str, Any], offset: int, limit: int) -> dict[str, object]:
    """One page of a search, as the API returns it (also what bench/bench_serve.py times)."""
    started = time.perf_counter()
    text = (params.pop("q", None) or "").strip()
    similar = params.pop("similar", None)
    example = params.pop("example", None)
    top = offset + limit + 1
    lib = gallery.reader
    if example:
        path = gallery.examples.get(example)
        if path is None or not path.exists():
            raise UsageError("that example image is gone; drop it again")
        with gallery.example_lock:
            found = gallery.examples_library().query(_text_only(text) if text else None, images=[path], top=top,
                                                     **params)
        return _answer(found, offset, limit, started, example=example)
    if similar is not None:
        row = indexed_row(gallery, similar)
        with gallery.read_lock:
            found = lib.query(similar_to=row.path, top=top, **{k: v for k, v in params.items() if k != "tags"})
        return _answer(found, offset, limit, started, similar=row.id)
    if not text:
        tags = params.get("tags") or []
        rows, total = photos.browse(lib, tag=tags[0] if tags else None, offset=offset, limit=limit)
        what = f"photos tagged {tags[0]!r}, most confident first" if tags else "newest photos first"
        return {"results": [row_dict(r) for r in rows], "offset": offset, "more": offset + len(rows) < total,
                "relevance": f"{total} photos, {what}", "cutoff": None, "nothing": None if rows else
                "no photos here", "terms": None, "server_ms": round((time.perf_counter() - started) * 1000, 2)}
    with gallery.read_lock:
        found = lib.query(_text_only(text), top=top, **params)
    return _answer(found, offset, limit, started)


async def _search(gallery: Gallery, request: Request) -> Response:
    offset, limit = _paging(request)
    params = _filters(request)
    q = request.query_params
    params["q"] = q.get("q")
    if q.get("similar"):
        try:
            params["similar"] = int(q["similar"])
        except ValueError:
            raise UsageError("similar is a photo id") from None
    if q.get("example"):
        params["example"] = q["example"]
    return json_reply(await run_in_threadpool(search, gallery, params, offset, limit))


async def _search_image(gallery: Gallery, request: Request) -> Response:
    """An example image in the request body (dropped or pasted): kept by content hash, then searched."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD:
            return json_reply({"error": "that image is too large (40 MB at most)"}, 413)
    if not body:
        raise UsageError("no image in the request")
    key = hashlib.sha256(body).hexdigest()[:32]
    path = gallery.uploads / f"{key}.img"
    if not path.exists():
        path.write_bytes(bytes(body))
    gallery.examples[key] = path
    for old in list(gallery.examples)[:-EXAMPLES_KEPT]:
        with contextlib.suppress(OSError):
            gallery.examples.pop(old).unlink()
    offset, limit = _paging(request)
    params = {**_filters(request), "q": request.query_params.get("q"), "example": key}
    return json_reply(await run_in_threadpool(search, gallery, params, offset, limit))


# --- one photo ------------------------------------------------------------------------------------


