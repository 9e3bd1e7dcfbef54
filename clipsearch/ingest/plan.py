"""Planning an indexing run: what each found file needs, decided from size and mtime alone.

Unchanged files are left alone, changed and new ones are decoded, files skipped before and
unchanged since are not tried again, and a known file missing from the scan whose size and
fingerprint match a new file has moved: its row and vector follow it without decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import xxhash

from clipsearch import paths
from clipsearch.index.records import KnownFile, SkipRecord
from clipsearch.index.store import Store
from clipsearch.ingest import scan


def fingerprint(path: str, size: int) -> str:
    """xxh64 of the size and the first and last 64 KiB: recognises a moved file without reading it all."""
    h = xxhash.xxh64(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        h.update(f.read(65536))
        if size > 131072:
            f.seek(-65536, os.SEEK_END)
            h.update(f.read(65536))
    return h.hexdigest()


@dataclass
class Plan:
    todo: list[scan.FoundFile] = field(default_factory=list)  # to decode and embed, in scan order
    changed: set[str] = field(default_factory=set)  # paths in `todo` that the index knew before
    moves: list[tuple[int, str, int, int]] = field(default_factory=list)  # (id, new path, size, mtime_ns)
    removed_ids: list[int] = field(default_factory=list)
    skips: list[SkipRecord] = field(default_factory=list)  # known-bad files, unchanged since they were skipped
    # Paths in `todo` whose stored vector a rejected image graph embedded (index/unchecked.py), and
    # the moves among `moves` of such files: committed before they are embedded again under the new path.
    redo: set[str] = field(default_factory=set)
    redo_moves: list[tuple[int, str, int, int]] = field(default_factory=list)
    gone_skips: list[str] = field(default_factory=list)  # skip records of files no longer there: forgotten
    unchanged: int = 0


def plan(store: Store, roots: list[str], found: list[scan.FoundFile], reported: frozenset[str] = frozenset(),
         redo: frozenset[int] = frozenset()) -> Plan:
    """Compare the scan under `roots` with what the index holds there (no decoding, no hashing).

    `reported` are the paths the scan itself passed over with a reason (a broken symlink): they are
    still there, so their skip records stay. `redo` are the ids of rows whose vectors must be embedded
    again though their files are unchanged (a rejected image graph's: index/unchecked.py).
    """
    known = {p: k for p, k in store.known_files().items() if paths.under(p, roots)}
    skipped_before = store.skipped_unchanged()
    found_paths = {f.path for f in found}
    missing: dict[str, KnownFile] = {p: k for p, k in known.items() if p not in found_paths}
    out = Plan()
    new_files: list[scan.FoundFile] = []
    for f in found:
        k = known.get(f.path)
        if k is not None:
            if (k.size, k.mtime_ns) != (f.size, f.mtime_ns):
                out.todo.append(f)
                out.changed.add(f.path)
            elif k.id in redo:
                out.todo.append(f)
                out.redo.add(f.path)
            else:
                out.unchanged += 1
            continue
        before = skipped_before.get(f.path)
        if before is not None and (before.size, before.mtime_ns) == (f.size, f.mtime_ns):
            out.skips.append(before)
            continue
        new_files.append(f)
    out.todo.extend(_match_moves(new_files, missing, out.moves))  # changed files first, then new ones
    # A moved file whose vector wants embedding again: its row follows it first (same id, so its tags
    # stay), then it is embedded at its new path like any other in `redo`.
    by_path = {f.path: f for f in new_files}
    out.redo_moves = [m for m in out.moves if m[0] in redo]
    out.moves = [m for m in out.moves if m[0] not in redo]
    out.todo.extend(by_path[m[1]] for m in out.redo_moves)
    out.redo.update(m[1] for m in out.redo_moves)
    out.removed_ids = [k.id for k in missing.values()]
    # A skip record describes a file; with the file gone (under the roots scanned) it is forgotten too.
    out.gone_skips = [p for p in skipped_before
                      if p not in found_paths and p not in reported and paths.under(p, roots)]
    return out


def _match_moves(new_files: list[scan.FoundFile], missing: dict[str, KnownFile],
                 moves: list[tuple[int, str, int, int]]) -> list[scan.FoundFile]:
    """New files that are not moved known ones; each move found is appended to `moves` and taken
    out of `missing`. Only files whose size matches a missing one are fingerprinted."""
    if not missing:
        return new_files
    by_print = {(k.size, k.fingerprint): (p, k) for p, k in missing.items()}
    sizes = {k.size for k in missing.values()}
    todo = []
    for f in new_files:
        hit = None
        if f.size in sizes:
            try:
                hit = by_print.pop((f.size, fingerprint(f.path, f.size)), None)
            except OSError:
                hit = None
        if hit is None:
            todo.append(f)
        else:
            moves.append((hit[1].id, f.path, f.size, f.mtime_ns))
            del missing[hit[0]]
    return todo
