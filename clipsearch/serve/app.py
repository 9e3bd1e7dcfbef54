"""The gallery's HTTP API and page: a thin skin over `Library`, as the CLI is.

Routes read through one `Library` (queries, status, tags, duplicates, photos by id) and write through
the writer thread (jobs.py). Every request has passed `security.Guard` first.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from clipsearch import paths
from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.serve.jobs import Follower, Hub, Watcher, Writer
from clipsearch.serve.replies import NotFoundError, json_reply
from clipsearch.serve.security import COOKIE, Guard, csrf_for, new_token

if TYPE_CHECKING:
    from clipsearch.library import Library

STATIC = Path(__file__).parent / "static"
# The only files the page is made of: a fixed table, so no request path ever reaches the filesystem.
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}


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
            self.hub.publish("watching", roots=[paths.display(r) for r in self.watch_roots])

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

    from clipsearch.serve.library_routes import _duplicates, _events, _reindex, _status, _tag, _tags, _trash
    from clipsearch.serve.photo_routes import _original, _photo, _reveal, _thumb, _view
    from clipsearch.serve.search_routes import _search, _search_image

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
    status = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, UsageError) else (
        409 if exc.exit_code == 3 else 500)
    return JSONResponse({"error": str(exc)}, status_code=status)


# --- the page -------------------------------------------------------------------------------------


async def _page(gallery: Gallery, request: Request) -> Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    html = html.replace("{{csrf}}", csrf_for(gallery.token))
    return Response(html, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"})


async def _asset(gallery: Gallery, request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return json_reply({"error": "not found"}, 404)
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})


