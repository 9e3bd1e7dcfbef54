"""Finding the photos under the folders a user names, in a stable sorted order.

Hidden files and folders and macOS litter (`._*`, `.DS_Store`) are skipped the way a file manager
would hide them; symlinks are not followed unless asked, and then never twice into the same folder.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from clipsearch.errors import UsageError
from clipsearch.formats import INDEXED_EXTENSIONS, RAW_EXTENSIONS

# A RAW beside a same-named JPEG is represented by the JPEG (camera RAW+JPEG mode).
_RAW_COMPANIONS = (".jpg", ".jpeg", ".JPG", ".JPEG")


@dataclass(frozen=True)
class FoundFile:
    path: str  # absolute, as the OS gives it (may hold surrogate escapes for non-UTF-8 names)
    size: int
    mtime_ns: int


@dataclass
class ScanProblems:
    """Things found on the way that are not files to index, with the reason each was passed over."""

    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)

    def add(self, path: str, reason: str, detail: str = "") -> None:
        self.skipped.append((path, reason, detail))


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "Thumbs.db" or name == "desktop.ini"


def _excluded(path: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def walk(roots: Sequence[str | os.PathLike[str]], exclude: tuple[str, ...] = (), follow_symlinks: bool = False,
         include_hidden: bool = False, problems: ScanProblems | None = None) -> Iterator[FoundFile]:
    """Yield every image file under `roots` (files named directly are yielded as they are)."""
    problems = problems if problems is not None else ScanProblems()
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        top = os.path.abspath(os.fspath(root))
        try:
            st = os.stat(top)
        except FileNotFoundError:
            raise UsageError(f"no such file or folder: {root}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {root}: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            ext = os.path.splitext(top)[1].lower()
            if ext in INDEXED_EXTENSIONS:
                yield FoundFile(top, st.st_size, st.st_mtime_ns)
            else:  # named by the user: say why it was passed over, rather than index nothing in silence
                problems.add(top, "not an image",
                             f"{ext or 'no extension'} is not a photo format (nor a video) clipsearch reads")
            continue
        yield from _walk_dir(top, exclude, follow_symlinks, include_hidden, problems, seen_dirs)


def _walk_dir(top: str, exclude: tuple[str, ...], follow: bool, include_hidden: bool,
              problems: ScanProblems, seen_dirs: set[tuple[int, int]]) -> Iterator[FoundFile]:
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                problems.add(folder, "symlink loop", "folder already visited")
                continue
            seen_dirs.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            problems.add(folder, "unreadable", "permission denied (folder)")
            continue
        except OSError as exc:
            problems.add(folder, "unreadable", f"{exc.strerror or exc} (folder)")
            continue
        names = {e.name for e in entries}
        subdirs: list[str] = []
        for entry in entries:
            name = entry.name
            if not include_hidden and (_hidden(name) or name.startswith("._")):
                continue
            if _excluded(entry.path, name, exclude):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not follow:
                    continue
                if entry.is_dir(follow_symlinks=follow):
                    subdirs.append(entry.path)
                    continue
                ext = os.path.splitext(name)[1].lower()
                if ext not in INDEXED_EXTENSIONS:
                    continue
                if ext in RAW_EXTENSIONS and any(os.path.splitext(name)[0] + c in names for c in _RAW_COMPANIONS):
                    continue
                est = entry.stat(follow_symlinks=follow)
            except FileNotFoundError:
                if entry.is_symlink():
                    problems.add(entry.path, "broken symlink", "its target does not exist")
                continue
            except OSError as exc:
                if exc.errno == 40:  # ELOOP: a link that points at itself
                    problems.add(entry.path, "symlink loop", "link resolves to itself")
                else:
                    problems.add(entry.path, "unreadable", str(exc.strerror or exc))
                continue
            if stat.S_ISREG(est.st_mode):
                yield FoundFile(entry.path, est.st_size, est.st_mtime_ns)
        # Pushed in reverse so the stack pops them in sorted order: traversal is stable.
        stack.extend(reversed(subdirs))
