"""One photo by id: its details, thumbnail, view, original and reveal-in-folder."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from clipsearch import paths, photos
from clipsearch.formats import is_video
from clipsearch.index.records import ImageRecord
from clipsearch.serve import files
from clipsearch.serve.replies import NotFoundError, json_reply, row_dict

if TYPE_CHECKING:
    from clipsearch.serve.app import Gallery


def indexed_row(gallery: Gallery, image_id: int) -> ImageRecord:
    found = photos.photo(gallery.reader, image_id)
    if found is None:
        raise NotFoundError()
    return found.row


def _photo_info(gallery: Gallery, image_id: int) -> dict[str, object] | None:
    found = photos.photo(gallery.reader, image_id)
    if found is None:
        return None
    row = photos.file_row(found.row)  # a video's moment: its video's file, and the time
    moment = found.row.path[len(row.path) + 3:] if row is not found.row else ""
    modified = dt.datetime.fromtimestamp(row.mtime_ns / 1e9, tz=dt.timezone.utc).astimezone()
    return {**row_dict(row), "taken_at": row.taken_at, "modified": modified.isoformat(timespec="seconds"),
            "time": float(moment) if moment else None, "folder": paths.display(os.path.dirname(row.path)),
            "place": None if row.lat is None or row.lon is None else {"lat": row.lat, "lon": row.lon},
            "camera": files.camera(row), "available": files.open_indexed(row) is not None,
            "tags": [{"label": lab, "score": round(score, 3), "source": src} for lab, score, src in found.tags],
            "can_reveal": _reveal_command("x") is not None}


async def _photo(gallery: Gallery, request: Request) -> Response:
    info = await run_in_threadpool(_photo_info, gallery, request.path_params["id"])
    return json_reply({"error": "no such photo in the index"}, 404) if info is None else json_reply(info)


def _image_response(path: Path | None) -> Response:
    if path is None:
        return json_reply({"error": "this photo's file is gone or has changed since it was indexed"}, 404)
    return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})


async def _thumb(gallery: Gallery, request: Request) -> Response:
    def make() -> Path | None:
        found = photos.photo(gallery.reader, request.path_params["id"])
        if found is None:
            return None
        row = found.row
        cached = gallery.path / "thumbs" / f"{row.id}-{row.mtime_ns}.jpg"
        if cached.exists():
            return cached
        f = files.open_indexed(photos.file_row(row))  # only the file that was indexed, not what is there now
        if f is None:
            return None
        f.close()
        return gallery.reader.thumbnail_of(row.id, row.path, row.mtime_ns)

    return _image_response(await run_in_threadpool(make))


async def _view(gallery: Gallery, request: Request) -> Response:
    def make() -> Path | None:
        found = photos.photo(gallery.reader, request.path_params["id"])
        if found is None:
            return None
        if is_video(photos.file_row(found.row).path):  # a video's view is the frame of its moment
            f = files.open_indexed(photos.file_row(found.row))  # only the video that was indexed
            if f is None:
                return None
            f.close()
            return gallery.reader.thumbnail_of(found.row.id, found.row.path, found.row.mtime_ns)
        return files.view(gallery.path / "thumbs", found.row)

    return _image_response(await run_in_threadpool(make))


async def _original(gallery: Gallery, request: Request) -> Response:
    found = await run_in_threadpool(photos.photo, gallery.reader, request.path_params["id"])
    f = None if found is None else files.open_indexed(photos.file_row(found.row))  # a frame: its video
    if found is None or f is None:
        return json_reply({"error": "this photo's file is gone or has changed since it was indexed"}, 404)
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

    found = await run_in_threadpool(photos.photo, gallery.reader, request.path_params["id"])
    if found is None:
        return json_reply({"error": "no such photo in the index"}, 404)
    command = _reveal_command(found.row.path)
    if command is None:
        return json_reply({"error": "revealing a file is not supported on this system"}, 501)
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json_reply({"ok": True})


# --- tags, status, duplicates ---------------------------------------------------------------------


