"""The gallery's HTTP API and page: a thin skin over `Library`, as the CLI is.

Routes read through one `Library` (queries, status, tags, duplicates, photos by id) and write through
the writer thread (jobs.py). Every request has passed `security.Guard` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from clipsearch import library_photos, scan
from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.serve import files
from clipsearch.serve.jobs import Follower, Hub, Watcher, Writer
from clipsearch.serve.security import COOKIE, Guard, csrf_for, new_token
from clipsearch.store import ImageRow

if TYPE_CHECKING:
    from clipsearch.library import Library

STATIC = Path(__file__).parent / "static"
# The only files the page is made of: a fixed table, so no request path ever reaches the filesystem.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
PAGE_SIZE = 60
MAX_RESULTS = 5000
MAX_UPLOAD = 40 * 1024 * 1024
EXAMPLES_KEPT = 20


@dataclass
class Gallery:
    """What the routes share: the reading library, the writer, events, the token."""

    index: Path | None
    model: str | None = None
    token: str = field(default_factory=new_token)
    watch_roots: list[str] | None = None  # None: no --watch

    def __post_init__(self) -> None:
        self.reader = self.library()
        self.path = self.reader.path
        self._examples_lib: Library | None = None  # image queries load the model; text queries never do
        self.read_lock = threading.Lock()
        self.example_lock = threading.Lock()
        self.hub = Hub()
        self.writer = Writer(self.library, self.hub)
        self.watcher: Watcher | None = None
        self.follower = Follower(self.reader, self.writer)
        self.examples: dict[str, Path] = {}
        self.uploads = Path(tempfile.mkdtemp(prefix="clipsearch-serve-"))

    def start(self) -> None:
        self.follower.start()
        if self.watch_roots is not None:
            self.watcher = Watcher(self.watch_roots, self.writer, ignore=[str(self.path)])
            self.watcher.start()
            # Indexing needs the model: load it now, so the first new photo is searchable in seconds.
            self.writer.submit("loading the model", lambda lib: lib.embedder() and None)
            self.hub.publish("watching", roots=[scan.display_path(r) for r in self.watch_roots])

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.follower.stop()
        self.writer.stop()
        for f in self.uploads.glob("*"):
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            self.uploads.rmdir()

    def library(self) -> Library:
        """A new Library on the index: one reads, one writes, one answers example images (and loads the model)."""
        from clipsearch.library import Library

        return Library(self.index, model=self.model)

    def examples_library(self) -> Library:
        if self._examples_lib is None:
            self._examples_lib = self.library()
        return self._examples_lib


def create_app(gallery: Gallery, extra_hosts: tuple[str, ...] = (), cookie: str = COOKIE) -> Starlette:
    """The ASGI app: routes behind the guard; the gallery's threads start and stop with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gallery.start()
        try:
            yield
        finally:
            await run_in_threadpool(gallery.stop)

    def bind(handler: Callable[[Gallery, Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        return functools.partial(handler, gallery)

    routes = [
        Route("/", bind(_page)),
        Route("/static/{name}", bind(_asset)),
        Route("/api/search", bind(_search)),
        Route("/api/search/image", bind(_search_image), methods=["POST"]),
        Route("/api/photo/{id:int}", bind(_photo)),
        Route("/api/photo/{id:int}/thumb", bind(_thumb)),
        Route("/api/photo/{id:int}/view", bind(_view)),
        Route("/api/photo/{id:int}/original", bind(_original)),
        Route("/api/photo/{id:int}/reveal", bind(_reveal), methods=["POST"]),
        Route("/api/tags", bind(_tags)),
        Route("/api/status", bind(_status)),
        Route("/api/duplicates", bind(_duplicates)),
        Route("/api/trash", bind(_trash), methods=["POST"]),
        Route("/api/index", bind(_reindex), methods=["POST"]),
        Route("/api/tag", bind(_tag), methods=["POST"]),
        Route("/api/events", bind(_events)),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(Guard, token=gallery.token, extra_hosts=extra_hosts, cookie=cookie)],
                     exception_handlers={ClipsearchError: _error})


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClipsearchError)
    status = 404 if isinstance(exc, _NotFoundError) else 400 if isinstance(exc, UsageError) else (
        409 if exc.exit_code == 3 else 500)
    return JSONResponse({"error": str(exc)}, status_code=status)


def _json(payload: object, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


# --- the page -------------------------------------------------------------------------------------


async def _page(gallery: Gallery, request: Request) -> Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    html = html.replace("{{csrf}}", csrf_for(gallery.token))
    return Response(html, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})


async def _asset(gallery: Gallery, request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return _json({"error": "not found"}, 404)
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})


# --- searching ------------------------------------------------------------------------------------


def _result_dict(r: Any) -> dict[str, object]:
    return {"id": r.id, "score": round(r.score, 4), "name": os.path.basename(r.path),
            "path": scan.display_path(r.path), "date": r.date, "width": r.width, "height": r.height,
            "format": r.format, "size": r.size}


def _row_dict(row: ImageRow) -> dict[str, object]:
    from clipsearch.search import row_date

    return {"id": row.id, "score": None, "name": os.path.basename(row.path), "path": scan.display_path(row.path),
            "date": row.taken_at or row_date(row).astimezone().isoformat(timespec="seconds"),
            "width": row.width, "height": row.height, "format": row.format, "size": row.size}


def _filters(request: Request) -> dict[str, Any]:
    from clipsearch.query import parse_date

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
            "sort": q.get("sort") or "score", "tags": [t for t in q.getlist("tag") if t.strip()]}


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
    from clipsearch import query as query_mod

    for term in query_mod.parse(text, frozenset()):
        if os.path.splitext(term.value)[1].lower() in scan.IMAGE_EXTENSIONS or term.value.startswith(("/", "~")):
            raise UsageError(f"{term.value!r} looks like a file path; drop or paste the photo to search by it")
    return text


def _answer(found: Any, offset: int, limit: int, started: float, **extra: object) -> dict[str, object]:
    """A page of results with the relevance line as the CLI's contact sheet shows it."""
    from clipsearch import render

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
        row = _row(gallery, similar)
        with gallery.read_lock:
            found = lib.query(similar_to=row.path, top=top, **{k: v for k, v in params.items() if k != "tags"})
        return _answer(found, offset, limit, started, similar=row.id)
    if not text:
        tags = params.get("tags") or []
        rows, total = library_photos.browse(lib, tag=tags[0] if tags else None, offset=offset, limit=limit)
        what = f"photos tagged {tags[0]!r}, most confident first" if tags else "newest photos first"
        return {"results": [_row_dict(r) for r in rows], "offset": offset, "more": offset + len(rows) < total,
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
    return _json(await run_in_threadpool(search, gallery, params, offset, limit))


async def _search_image(gallery: Gallery, request: Request) -> Response:
    """An example image in the request body (dropped or pasted): kept by content hash, then searched."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD:
            return _json({"error": "that image is too large (40 MB at most)"}, 413)
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
    return _json(await run_in_threadpool(search, gallery, params, offset, limit))


# --- one photo ------------------------------------------------------------------------------------


def _row(gallery: Gallery, image_id: int) -> ImageRow:
    found = library_photos.photo(gallery.reader, image_id)
    if found is None:
        raise _NotFoundError()
    return found.row


class _NotFoundError(UsageError):
    def __init__(self) -> None:
        super().__init__("no such photo in the index")


def _photo_info(gallery: Gallery, image_id: int) -> dict[str, object] | None:
    found = library_photos.photo(gallery.reader, image_id)
    if found is None:
        return None
    row = found.row
    modified = dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
    return {**_row_dict(row), "taken_at": row.taken_at, "modified": modified.isoformat(timespec="seconds"),
            "folder": scan.display_path(os.path.dirname(row.path)),
            "place": None if row.lat is None or row.lon is None else {"lat": row.lat, "lon": row.lon},
            "camera": files.camera(row), "available": files.open_indexed(row) is not None,
            "tags": [{"label": lab, "score": round(score, 3), "source": src} for lab, score, src in found.tags],
            "can_reveal": _reveal_command("x") is not None}


async def _photo(gallery: Gallery, request: Request) -> Response:
    info = await run_in_threadpool(_photo_info, gallery, request.path_params["id"])
    return _json({"error": "no such photo in the index"}, 404) if info is None else _json(info)


def _image_response(path: Path | None) -> Response:
    if path is None:
        return _json({"error": "this photo's file is gone or has changed since it was indexed"}, 404)
    return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


async def _thumb(gallery: Gallery, request: Request) -> Response:
    def make() -> Path | None:
        found = library_photos.photo(gallery.reader, request.path_params["id"])
        if found is None:
            return None
        row = found.row
        cached = gallery.path / "thumbs" / f"{row.id}-{row.mtime_ns}.jpg"
        if cached.exists():
            return cached
        f = files.open_indexed(row)  # only the file that was indexed, not whatever is at its path now
        if f is None:
            return None
        f.close()
        return gallery.reader.thumbnail_of(row.id, row.path, row.mtime_ns)

    return _image_response(await run_in_threadpool(make))


async def _view(gallery: Gallery, request: Request) -> Response:
    def make() -> Path | None:
        found = library_photos.photo(gallery.reader, request.path_params["id"])
        return None if found is None else files.view(gallery.path / "thumbs", found.row)

    return _image_response(await run_in_threadpool(make))


async def _original(gallery: Gallery, request: Request) -> Response:
    found = await run_in_threadpool(library_photos.photo, gallery.reader, request.path_params["id"])
    f = None if found is None else files.open_indexed(found.row)
    if found is None or f is None:
        return _json({"error": "this photo's file is gone or has changed since it was indexed"}, 404)
    media = files.MEDIA_TYPES.get(found.row.format or "", "application/octet-stream")
    return StreamingResponse(files.iter_file(f), media_type=media,
                             headers={"content-length": str(found.row.size), "cache-control": "private, no-cache"})


def _reveal_command(path: str) -> list[str] | None:
    import shutil
    import sys

    if sys.platform == "darwin":
        return ["open", "-R", path]
    if sys.platform == "win32":
        return ["explorer", f"/select,{path}"]
    opener = shutil.which("xdg-open")
    return [opener, os.path.dirname(path)] if opener else None


async def _reveal(gallery: Gallery, request: Request) -> Response:
    import subprocess

    found = await run_in_threadpool(library_photos.photo, gallery.reader, request.path_params["id"])
    if found is None:
        return _json({"error": "no such photo in the index"}, 404)
    command = _reveal_command(found.row.path)
    if command is None:
        return _json({"error": "revealing a file is not supported on this system"}, 501)
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _json({"ok": True})


# --- tags, status, duplicates ---------------------------------------------------------------------


async def _tags(gallery: Gallery, request: Request) -> Response:
    counts = await run_in_threadpool(gallery.reader.tag_counts)
    return _json({"tags": [{"label": lab, "source": src, "count": n} for lab, src, n in counts]})


def _status_dict(gallery: Gallery) -> dict[str, object]:
    st = gallery.reader.status()
    payload = st.as_dict()
    payload["index"] = scan.display_path(str(st.path))
    payload["roots"] = [scan.display_path(r) for r in (gallery.watch_roots if gallery.watch_roots is not None
                                                       else library_photos.roots(gallery.reader))]
    payload["watching"] = gallery.watch_roots is not None
    payload["skipped_files"] = [{"path": scan.display_path(p), "reason": r, "detail": d}
                                for p, r, d in gallery.reader.skipped()[:1000]]
    payload["job"] = dict(gallery.hub.state)
    payload["model_name"] = st.model.name if st.model else None
    return payload


async def _status(gallery: Gallery, request: Request) -> Response:
    return _json(await run_in_threadpool(_status_dict, gallery))


def _duplicates_dict(gallery: Gallery, similar: bool) -> dict[str, object]:
    with gallery.read_lock:  # it shares the reading library's FAISS index with queries
        groups = gallery.reader.duplicates(similar=similar)
    return {"groups": [{"tier": g.tier, "keep": g.keep.id, "members": [
        {**_row_dict(m), "keep": m.id == g.keep.id, "cosine": round(g.scores.get(m.id, 1.0), 4)}
        for m in g.members]} for g in groups]}


async def _duplicates(gallery: Gallery, request: Request) -> Response:
    similar = request.query_params.get("similar") in ("1", "true")
    return _json(await run_in_threadpool(_duplicates_dict, gallery, similar))


def trash(gallery: Gallery, ids: list[int]) -> dict[str, object]:
    """Move photos to the platform's trash (never a hard delete), then drop them from the index."""
    import send2trash

    gone: list[int] = []
    failed: list[dict[str, object]] = []
    for image_id in ids:
        found = library_photos.photo(gallery.reader, image_id)
        if found is None:
            failed.append({"id": image_id, "error": "not in the index"})
            continue
        f = files.open_indexed(found.row)
        if f is None:  # changed or replaced since it was indexed: not what the user reviewed
            failed.append({"id": image_id, "error": "the file is gone or changed since it was indexed"})
            continue
        f.close()
        try:
            send2trash.send2trash(found.row.path)
        except OSError as exc:
            failed.append({"id": image_id, "error": str(exc)})
            continue
        gone.append(image_id)
    removed = gallery.writer.run_now("forget", lambda lib: library_photos.forget(lib, gone)) if gone else 0
    gallery.hub.publish("changed", removed=removed)
    return {"trashed": gone, "failed": failed, "removed_from_index": removed}


async def _trash(gallery: Gallery, request: Request) -> Response:
    try:
        body = json.loads(await request.body())
        ids = [int(i) for i in body["ids"]]
        confirmed = body.get("confirm") is True
    except (ValueError, KeyError, TypeError):
        raise UsageError('send {"ids": [...], "confirm": true}') from None
    if not confirmed:
        raise UsageError("moving photos to the trash needs an explicit confirmation")
    if not ids:
        raise UsageError("no photos chosen")
    return _json(await run_in_threadpool(trash, gallery, ids))


async def _reindex(gallery: Gallery, request: Request) -> Response:
    roots = gallery.watch_roots if gallery.watch_roots is not None else library_photos.roots(gallery.reader)
    if not roots:
        raise UsageError("the index covers no folders yet; run `clipsearch index FOLDER` first")
    gallery.writer.index(roots, reason="asked")
    return _json({"queued": True, "folders": [scan.display_path(r) for r in roots]}, 202)


async def _tag(gallery: Gallery, request: Request) -> Response:
    def job(lib: Any) -> dict[str, object]:
        summary = lib.tag()
        return {"photos": summary.photos, "tagged": summary.tagged, "labels": summary.labels}

    gallery.writer.submit("tag", job)
    return _json({"queued": True}, 202)


# --- live events ----------------------------------------------------------------------------------


async def _events(gallery: Gallery, request: Request) -> Response:
    """Server-sent events: job progress and index changes. Ends after a while; EventSource reconnects."""
    try:
        last = int(request.headers.get("last-event-id") or request.query_params.get("after") or -1)
        lifetime = min(60.0, float(request.query_params.get("seconds") or 25))
    except ValueError:
        raise UsageError("after is an event id") from None
    if last < 0:
        last = gallery.hub.last_id  # a new listener starts from now

    async def stream() -> AsyncIterator[str]:
        nonlocal last
        yield f"retry: 1000\nevent: hello\ndata: {json.dumps(gallery.hub.state)}\n\n"
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            events = gallery.hub.since(last)
            for event in events:
                last = event.id
                yield event.sse()
            if not events:
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})
