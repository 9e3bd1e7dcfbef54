"""The library's pages: tags, status, duplicates and the trash, index and tag runs, live events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from clipsearch import paths, photos
from clipsearch.errors import UsageError
from clipsearch.serve import files
from clipsearch.serve.replies import json_reply, row_dict

if TYPE_CHECKING:
    from clipsearch.serve.app import Gallery


async def _tags(gallery: Gallery, request: Request) -> Response:
    counts = await run_in_threadpool(gallery.reader.tag_counts)
    return json_reply({"tags": [{"label": lab, "source": src, "count": n} for lab, src, n in counts]})


def _status_dict(gallery: Gallery) -> dict[str, object]:
    st = gallery.reader.status()
    payload = st.as_dict()
    payload["index"] = paths.display(str(st.path))
    payload["roots"] = [paths.display(r) for r in (gallery.watch_roots if gallery.watch_roots is not None
                                                       else photos.roots(gallery.reader))]
    payload["watching"] = gallery.watch_roots is not None
    payload["skipped_files"] = [{"path": paths.display(p), "reason": r, "detail": d}
                                for p, r, d in gallery.reader.skipped()[:1000]]
    payload["job"] = dict(gallery.hub.state)
    payload["model_name"] = st.model.name if st.model else None
    return payload


async def _status(gallery: Gallery, request: Request) -> Response:
    return json_reply(await run_in_threadpool(_status_dict, gallery))


def _duplicates_dict(gallery: Gallery, similar: bool) -> dict[str, object]:
    with gallery.read_lock:  # it shares the reading library's FAISS index with queries
        groups = gallery.reader.duplicates(similar=similar)
    return {"groups": [{"tier": g.tier, "keep": g.keep.id, "members": [
        {**row_dict(m), "keep": m.id == g.keep.id, "cosine": round(g.scores.get(m.id, 1.0), 4)}
        for m in g.members]} for g in groups]}


async def _duplicates(gallery: Gallery, request: Request) -> Response:
    similar = request.query_params.get("similar") in ("1", "true")
    return json_reply(await run_in_threadpool(_duplicates_dict, gallery, similar))


def trash(gallery: Gallery, ids: list[int]) -> dict[str, object]:
    """Move photos to the platform's trash (never a hard delete), then drop them from the index."""
    import send2trash

    gone: list[int] = []
    failed: list[dict[str, object]] = []
    for image_id in ids:
        found = photos.photo(gallery.reader, image_id)
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
    removed = gallery.writer.run_now("forget", lambda lib: photos.forget(lib, gone)) if gone else 0
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
    return json_reply(await run_in_threadpool(trash, gallery, ids))


async def _reindex(gallery: Gallery, request: Request) -> Response:
    roots = gallery.watch_roots if gallery.watch_roots is not None else photos.roots(gallery.reader)
    if not roots:
        raise UsageError("the index covers no folders yet; run `clipsearch index FOLDER` first")
    gallery.writer.index(roots, reason="asked")
    return json_reply({"queued": True, "folders": [paths.display(r) for r in roots]}, 202)


async def _tag(gallery: Gallery, request: Request) -> Response:
    def job(lib: Any) -> dict[str, object]:
        summary = lib.tag()
        return {"photos": summary.photos, "tagged": summary.tagged, "labels": summary.labels}

    gallery.writer.submit("tag", job)
    return json_reply({"queued": True}, 202)


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
