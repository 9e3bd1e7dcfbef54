"""Recognising a photo the index holds already, so that its stored vector stands in for the model.

`query --image PHOTO` (and an image part of a composite query, an example for `learn`, a gallery
upload) of an indexed photo needs no model at all: the index has its vector, embedded as indexing
embeds. A photo is the indexed one when its resolved path is indexed with the same size and mtime
(what indexing itself trusts to skip a file), or, when it moved or is a copy under another name,
when its size and fingerprint (plan.fingerprint: xxh64 of the size and the first and last 64 KiB,
what indexing trusts to follow a moved file) are an indexed photo's. A file changed since it was
indexed matches neither, and is embedded anew rather than answered with a stale vector.
"""

from __future__ import annotations

import os

import numpy as np

from clipsearch import paths
from clipsearch.index.store import Store
from clipsearch.ingest.plan import fingerprint


def stored_vector(store: Store, photo: str | os.PathLike[str]) -> np.ndarray | None:
    """The stored vector of the indexed photo that `photo` is, or None (not indexed, or changed)."""
    path = paths.resolve(photo)
    try:
        st = os.stat(path)
    except OSError:
        return None
    image_id = store.id_for_path(path)
    if image_id is not None:
        row = store.images([image_id]).get(image_id)
        if row is not None and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            return _vector(store, image_id)
    try:
        same = store.ids_with_content(st.st_size, fingerprint(path, st.st_size))
    except OSError:
        return None
    return _vector(store, same[0]) if same else None


def _vector(store: Store, image_id: int) -> np.ndarray | None:
    try:
        return store.vectors_of_ids([image_id])[0]
    except KeyError:  # a row without a vector (never written so): embed it instead
        return None
