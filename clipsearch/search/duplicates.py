"""Finding copies among indexed photos, in separate tiers: exact, near, and (opt-in) similar.

- exact: identical bytes. Only files whose size and fingerprint (first and last 64 KiB) already
  collide are hashed in full, so the library is never read as a whole.
- near: the same picture resized, re-encoded, lightly cropped or edited. Candidates are nearest
  neighbours in the FAISS index with a very high CLIP cosine, each pair confirmed by a difference
  hash of the pictures, which CLIP alone cannot give: two different shots of one subject can score
  as high as a copy.
- similar: the same scene or burst: a high cosine, and capture times close together when both
  photos have one.

Within a group the photo to keep is the largest (pixels), then the oldest, then the shortest path.
Nothing is ever deleted.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import xxhash
from PIL import Image

from clipsearch import paths
from clipsearch.index import faults, video_tables
from clipsearch.index.records import ImageRecord
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex
from clipsearch.search.ranking import row_date

NEAR_COSINE = 0.95
NEAR_DHASH_BITS = 10  # of 64
SIMILAR_COSINE = 0.90
SIMILAR_WINDOW_S = 120.0
NEIGHBOURS = 10


@dataclass
class Group:
    tier: str  # "exact", "near" or "similar"
    members: list[ImageRecord]
    keep: ImageRecord
    scores: dict[int, float] = field(default_factory=dict)  # member id -> cosine to the kept photo

    @property
    def remove(self) -> list[ImageRecord]:
        return [m for m in self.members if m.id != self.keep.id]

    def as_dict(self) -> dict[str, object]:
        return {"tier": self.tier, "keep": self.keep.path,
                "members": [{"path": m.path, "id": m.id, "keep": m.id == self.keep.id, "width": m.width,
                             "height": m.height, "size": m.size, "taken_at": m.taken_at,
                             "cosine_to_kept": round(self.scores.get(m.id, 1.0), 6)} for m in self.members]}


def keep_first(rows: Iterable[ImageRecord]) -> ImageRecord:
    """Largest resolution, then the oldest capture (or file) time, then the shortest path."""
    return min(rows, key=lambda r: (-(r.width or 0) * (r.height or 0), row_date(r), len(r.path), r.path))


class _Sets:
    """Union-find over image ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def full_hash(path: str) -> str | None:
    h = xxhash.xxh3_128()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def dhash(path: str) -> int | None:
    """64-bit difference hash: brightness steps between neighbours of a 9x8 greyscale thumbnail."""
    try:
        with Image.open(path) as img:
            if (img.format or "").upper() in ("JPEG", "MPO"):
                img.draft("L", (64, 64))
            from PIL import ImageOps

            small = ImageOps.exif_transpose(img).convert("L").resize((9, 8), Image.Resampling.BOX)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def find(store: Store, index: VectorIndex, roots: tuple[str, ...] = (), near_cosine: float = NEAR_COSINE,
         near_dhash_bits: int = NEAR_DHASH_BITS, similar: bool = False, similar_cosine: float = SIMILAR_COSINE,
         similar_window_s: float = SIMILAR_WINDOW_S) -> list[Group]:
    """All duplicate groups among indexed photos under `roots` (everything when empty)."""
    faults.check_intact(store.db, store.path)  # it reads every row anyway: damage is an error, not a gap
    ids, mat = store.all_vectors()
    rows = store.images(ids.tolist())
    frames = video_tables.frame_owners(store.db)  # a video's later moments are not files (docs/video.md)
    scope = [i for i in ids.tolist() if i in rows and i not in frames
             and (not roots or paths.under(rows[i].path, roots))]
    if len(scope) < 2:
        return []
    groups = _exact(rows, scope)
    in_exact = {m.id: g.keep.id for g in groups for m in g.members}
    # Copies of a file are represented by its kept copy in the other tiers.
    candidates = [i for i in scope if in_exact.get(i, i) == i]
    position = {int(i): n for n, i in enumerate(ids.tolist())}
    pairs = _neighbour_pairs(index, mat, candidates, position, min(near_cosine, similar_cosine if similar else 1.0))
    near_sets, hashes = _Sets(), {}

    def dh(i: int) -> int | None:
        if i not in hashes:
            hashes[i] = dhash(rows[i].path)
        return hashes[i]

    cand = set(candidates)
    for (a, b), cos in pairs.items():
        if a not in cand or b not in cand or cos < near_cosine:
            continue
        ha, hb = dh(a), dh(b)
        if ha is not None and hb is not None and bin(ha ^ hb).count("1") <= near_dhash_bits:
            near_sets.union(a, b)
    groups += _as_groups("near", near_sets, rows, mat, position)
    if similar:
        # Near copies are represented by their kept photo too, so no pair is reported in two tiers.
        in_near = {m.id: g.keep.id for g in groups if g.tier == "near" for m in g.members}
        reps = {i for i in cand if in_near.get(i, i) == i}
        sim_sets = _Sets()
        for (a, b), cos in pairs.items():
            if cos >= similar_cosine and a in reps and b in reps and _close_in_time(rows[a], rows[b],
                                                                                   similar_window_s):
                sim_sets.union(a, b)
        groups += _as_groups("similar", sim_sets, rows, mat, position)
    return groups


def _exact(rows: dict[int, ImageRecord], scope: list[int]) -> list[Group]:
    by_print: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i in scope:
        by_print[(rows[i].size, rows[i].fingerprint)].append(i)
    groups = []
    for same in by_print.values():
        if len(same) < 2:
            continue
        by_hash: dict[str, list[int]] = defaultdict(list)
        for i in same:
            digest = full_hash(rows[i].path)
            if digest is not None:
                by_hash[digest].append(i)
        for members in by_hash.values():
            if len(members) > 1:
                member_rows = [rows[i] for i in members]
                groups.append(Group("exact", member_rows, keep_first(member_rows)))
    return groups


def _neighbour_pairs(index: VectorIndex, mat: np.ndarray, candidates: list[int], position: dict[int, int],
                     min_cosine: float) -> dict[tuple[int, int], float]:
    """Pairs (a < b) among each photo's nearest neighbours with a cosine of at least `min_cosine`."""
    pairs: dict[tuple[int, int], float] = {}
    k = min(NEIGHBOURS + 1, index.size)
    for start in range(0, len(candidates), 4096):
        chunk = candidates[start:start + 4096]
        queries = np.ascontiguousarray(mat[[position[i] for i in chunk]])
        scores, found = index.search(queries, k)
        for a, row_scores, row_ids in zip(chunk, scores, found, strict=True):
            for s, b in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                if b < 0 or b == a or s < min_cosine:
                    continue
                key = (a, b) if a < b else (b, a)
                pairs[key] = max(pairs.get(key, -1.0), float(s))
    return pairs


def _close_in_time(a: ImageRecord, b: ImageRecord, window_s: float) -> bool:
    if not (a.taken_at and b.taken_at):
        return True  # no capture times to compare: the cosine decides alone
    return abs((row_date(a) - row_date(b)) / dt.timedelta(seconds=1)) <= window_s


def _as_groups(tier: str, sets: _Sets, rows: dict[int, ImageRecord], mat: np.ndarray,
               position: dict[int, int]) -> list[Group]:
    out = []
    for members in sets.groups():
        member_rows = [rows[i] for i in members]
        keep = keep_first(member_rows)
        kv = mat[position[keep.id]]
        scores = {i: float(mat[position[i]] @ kv) for i in members}
        out.append(Group(tier, member_rows, keep, scores))
    return out
