"""What every route answers with: JSON that is never cached, a photo as the page shows it, not-found."""

from __future__ import annotations

import os

from starlette.responses import JSONResponse

from clipsearch import paths
from clipsearch.errors import UsageError
from clipsearch.index.records import ImageRecord


def json_reply(payload: object, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


class NotFoundError(UsageError):
    def __init__(self) -> None:
        super().__init__("no such photo in the index")


def row_dict(row: ImageRecord) -> dict[str, object]:
    from clipsearch.search.ranking import row_date

    return {"id": row.id, "score": None, "name": os.path.basename(row.path), "path": paths.display(row.path),
            "date": row.taken_at or row_date(row).astimezone().isoformat(timespec="seconds"),
            "width": row.width, "height": row.height, "format": row.format, "size": row.size}
