"""What `clipsearch status` reports about an index folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clipsearch.index import faults, roots, unchecked, video_tables
from clipsearch.index.store import Store
from clipsearch.index.vectors import cache_state
from clipsearch.model import background_export, image_tower, text_tower, vit_graph
from clipsearch.model.identity import ModelIdentity
from clipsearch.paths import display

REEMBED_REASON = ("the image model clipsearch built without torch to embed them did not match open_clip when it was "
                  "checked afterwards, so their vectors may be off; the next `clipsearch index` embeds them again "
                  "(searches work meanwhile)")


@dataclass(frozen=True)
class Status:
    path: Path
    model: ModelIdentity | None
    images: int
    skipped: dict[str, int]
    bytes_on_disk: int
    last_run_at: str | None
    last_run: dict[str, object] | None
    vector_cache: str
    text_model: bool = False  # queries can embed text without torch (text_tower.py)
    roots: tuple[str, ...] = ()  # the folders and photos `clipsearch index` re-scans (roots.py)
    videos: int = 0  # of `images`, how many are videos (docs/video.md)
    video_frames: int = 0  # the moments kept of them, each video's first included
    exporting: tuple[str, ...] = ()  # the towers a background exporter is preparing (background_export.py)
    image_model: bool = False  # new photos embed without torch (image_tower.py, model/onnx_indexing.py)
    reembed: int = 0  # photos (and videos) the next index run embeds again, a rejected graph's (unchecked.py)

    @property
    def reembed_reason(self) -> str | None:
        """Why `reembed` photos wait, in words; None when none does."""
        return REEMBED_REASON if self.reembed else None

    def as_dict(self) -> dict[str, object]:
        return {
            "index": str(self.path),
            "model": None if self.model is None else {
                "name": self.model.name, "embed_dim": self.model.embed_dim,
                "weights_sha256": self.model.weights_sha256},
            "images": self.images, "skipped": self.skipped, "bytes_on_disk": self.bytes_on_disk,
            "last_run_at": self.last_run_at, "last_run": self.last_run, "vector_cache": self.vector_cache,
            "text_model": self.text_model, "roots": [display(r) for r in self.roots],
            "videos": self.videos, "video_frames": self.video_frames, "exporting": list(self.exporting),
            "image_model": self.image_model,
            "reembed": self.reembed, "reembed_reason": self.reembed_reason,
        }


def status(folder: Path, store: Store) -> Status:
    faults.check_intact(store.db, store.path)  # a damaged database is not reported as healthy
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    last = store.last_run()
    model = store.model_identity()
    fast = model is not None and text_tower.available(folder, model.weights_sha256)
    videos, later_frames = video_tables.counts(store.db)
    # `images` counts files: a video's later frames are rows, not files.
    return Status(folder, model, store.count() - later_frames, store.skipped_counts(), size,
                  last[0] if last else None, json.loads(last[1]) if last and last[1] else None,
                  cache_state(folder, store), fast, tuple(roots.known(store)), videos, videos + later_frames,
                  background_export.running(folder),
                  image_model=model is not None and image_tower.available(folder, model.weights_sha256),
                  reembed=unchecked.count(store.db, vit_graph.rejected_mark(folder)))
