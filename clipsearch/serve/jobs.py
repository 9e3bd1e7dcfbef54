"""The gallery's one writer: indexing, tagging and forgetting run on a single thread, one job at a time.

Queries never wait for it: they read through another `Library` (SQLite WAL lets them read while this
thread commits). The writer takes the index's single-writer lock like any `clipsearch index` run,
so a CLI run and the gallery never write at once. What it does is published as events that the
page follows over server-sent events (`/api/events`).

`Watcher` (with --watch) turns filesystem events under the index's roots into index jobs over the
folders that changed, debounced: a burst of copies becomes one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipsearch import paths
from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:
    from clipsearch.library import Library

DEBOUNCE_S = 0.5  # quiet time after the last filesystem event before indexing
MAX_DELAY_S = 2.0  # a steady stream of events still gets indexed this soon after the first
KEEP_EVENTS = 500


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]

    def sse(self) -> str:
        return f"id: {self.id}\nevent: {self.kind}\ndata: {json.dumps(self.data, ensure_ascii=False)}\n\n"


class Hub:
    """Recent events in order, for any number of listeners that poll with the last id they saw."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._next = 1
        self._cond = threading.Condition()
        self.state: dict[str, Any] = {"job": None, "done": 0, "total": None, "skipped": 0, "last": None}

    def publish(self, kind: str, **data: Any) -> Event:
        with self._cond:
            event = Event(self._next, kind, data)
            self._next += 1
            self._events = [*self._events[-(KEEP_EVENTS - 1):], event]
            self._cond.notify_all()
            return event

    def since(self, last_id: int) -> list[Event]:
        with self._cond:
            return [e for e in self._events if e.id > last_id]

    def wait(self, last_id: int, timeout: float) -> list[Event]:
        """Events after `last_id`, waiting up to `timeout` seconds for one (from a worker thread)."""
        with self._cond:
            self._cond.wait_for(lambda: self._next - 1 > last_id, timeout)
            return [e for e in self._events if e.id > last_id]

    @property
    def last_id(self) -> int:
        with self._cond:
            return self._next - 1


class _Progress:
    """indexer.Progress that publishes, at most ~10 times a second."""

    def __init__(self, hub: Hub, job: str) -> None:
        self.hub, self.job, self._last = hub, job, 0.0

    def found(self, total: int) -> None:
        self.hub.state.update(total=total)
        self.hub.publish("progress", job=self.job, done=0, total=total, skipped=0)

    def advance(self, done: int, skipped: int) -> None:
        self.hub.state.update(done=done, skipped=skipped)
        now = time.monotonic()
        if now - self._last >= 0.1 or done == self.hub.state.get("total"):
            self._last = now
            self.hub.publish("progress", job=self.job, done=done, total=self.hub.state.get("total"), skipped=skipped)


class Writer:
    """A thread that runs write jobs in order on its own `Library` (which keeps its model loaded)."""

    def __init__(self, make_library: Callable[[], Library], hub: Hub) -> None:
        self._make_library = make_library
        self.hub = hub
        self._jobs: queue.Queue[tuple[str, Callable[[Library], Any], threading.Event | None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="clipsearch-writer", daemon=True)
        self._lib: Library | None = None
        self.busy = threading.Event()
        self._thread.start()

    def submit(self, name: str, job: Callable[[Library], Any], done: threading.Event | None = None) -> None:
        self._jobs.put((name, job, done))

    def index(self, folders: Iterable[str], reason: str) -> None:
        todo = sorted(set(folders))

        def job(lib: Library) -> dict[str, object]:
            summary = lib.index(todo, wait=True, progress=_Progress(self.hub, "index"))
            return {"new": summary.new, "changed": summary.changed, "moved": summary.moved,
                    "removed": summary.removed, "skipped": sum(summary.skipped.values()), "total": summary.total,
                    "folders": [paths.display(p) for p in todo], "reason": reason}

        self.submit("index", job)

    def run_now(self, name: str, job: Callable[[Library], Any]) -> Any:
        """Run a job on the writer thread and wait for its result (or its exception)."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def wrapped(lib: Library) -> Any:
            try:
                box["value"] = job(lib)
            except BaseException as exc:
                box["error"] = exc
                raise
            return box["value"]

        self.submit(name, wrapped, done)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _library(self) -> Library:
        if self._lib is None:
            self._lib = self._make_library()
        return self._lib

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            name, job, done = item
            self.busy.set()
            self.hub.state.update(job=name, done=0, total=None, skipped=0)
            self.hub.publish("started", job=name)
            try:
                result = job(self._library())
                self.hub.state.update(last={"job": name, "ok": True, "result": result})
                self.hub.publish("finished", job=name, ok=True, result=result if isinstance(result, dict) else None)
            except ClipsearchError as exc:
                self.hub.state.update(last={"job": name, "ok": False, "error": str(exc)})
                self.hub.publish("finished", job=name, ok=False, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a failed job is reported to the page; the server goes on
                self.hub.state.update(last={"job": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
                self.hub.publish("finished", job=name, ok=False, error=f"{type(exc).__name__}: {exc}")
            finally:
                self.hub.state.update(job=None)
                self.busy.clear()
                if done is not None:
                    done.set()


def _existing_folder(path: str, roots: list[str]) -> str | None:
    """The nearest existing folder at or above `path`, not above its root; None outside every root."""
    if not paths.under(path, roots):
        return None
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder or not paths.under(parent, roots):
            root = next(r for r in roots if paths.under(path, [r]))
            return root if os.path.isdir(root) else None
        folder = parent
    return folder


def collapse(folders: Iterable[str]) -> list[str]:
    """Folders with every one inside another dropped (indexing a folder covers its subfolders)."""
    out: list[str] = []
    for folder in sorted(set(folders)):
        if not out or not paths.under(folder, [out[-1]]):
            out.append(folder)
    return out


class Watcher:
    """watchdog over the roots; changed folders are indexed by the writer after a quiet moment."""

    def __init__(self, roots: list[str], writer: Writer, ignore: Iterable[str] = ()) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.roots = [os.path.abspath(r) for r in roots]
        self.writer = writer
        self._ignore = [os.path.abspath(p) for p in ignore]  # the index folder, if it lies under a root
        self._pending: set[str] = set()
        self._first = 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        watcher.touched(os.fsdecode(raw))

        self._observer = Observer()
        for root in self.roots:
            if os.path.isdir(root):
                self._observer.schedule(Handler(), root, recursive=True)
        self._thread = threading.Thread(target=self._loop, name="clipsearch-watch", daemon=True)

    def start(self) -> None:
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._observer.stop()
            self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def touched(self, path: str) -> None:
        if self._ignore and paths.under(path, self._ignore):
            return
        name = os.path.basename(path)
        if name.startswith("."):  # hidden files and editors' temporaries are never indexed
            return
        folder = _existing_folder(path, self.roots)
        if folder is None:
            return
        now = time.monotonic()
        with self._lock:
            if not self._pending:
                self._first = now
            self._pending.add(folder)
            self._last = now

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                if not self._pending:
                    continue
                now = time.monotonic()
                if now - self._last < DEBOUNCE_S and now - self._first < MAX_DELAY_S:
                    continue
                folders, self._pending = collapse(self._pending), set()
            self.writer.index(folders, reason="watch")


class Follower:
    """Notices what other processes do to the index (a `clipsearch index` in a terminal): once a second
    it reads who holds the write lock and the index's generation, and publishes the changes, so the
    pages say an update is running and refresh when it lands."""

    def __init__(self, lib: Library, writer: Writer, every_s: float = 1.0) -> None:
        self.lib = lib
        self.writer = writer
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clipsearch-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _read(self) -> tuple[int, int]:
        from clipsearch.index.store import Store

        with Store.open(self.lib.path) as store:
            return store.generation(), store.count()

    def _loop(self) -> None:
        from clipsearch.index.lock import LOCK_OWNER

        hub = self.writer.hub
        try:
            last = self._read()
        except (ClipsearchError, OSError):
            last = (-1, -1)
        owner: str | None = None
        while not self._stop.wait(self.every_s):
            try:
                now_owner = None
                if not self.writer.busy.is_set():  # our own writer's runs are reported by the writer
                    with contextlib.suppress(OSError, ValueError):
                        info = json.loads((self.lib.path / LOCK_OWNER).read_text())
                        now_owner = f"process {info['pid']} on {info['host']}"
                if now_owner != owner:
                    owner = now_owner
                    hub.state.update(external=owner)
                    hub.publish("external", busy=owner is not None, owner=owner)
                current = self._read()
            except (ClipsearchError, OSError, KeyError):
                continue
            if current != last:
                last = current
                hub.publish("changed", images=current[1])
