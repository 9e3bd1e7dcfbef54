"""What every command shares: the consoles, error handling, the library it opens, the progress bar.

The options that many commands take are in options.py.

Rich is imported only when something is drawn with it: a query printing paths to a pipe never
loads it (33 ms of a cold start).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clipsearch import config
from clipsearch._version import __version__
from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:
    from rich.console import Console

    from clipsearch.library import Library

F = TypeVar("F", bound=Callable[..., Any])

INTERNAL_ERROR = 70  # EX_SOFTWARE from sysexits.h: a bug in clipsearch, not in the user's request


class _LazyConsole:
    """A rich Console made on first use."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


_STDOUT, _STDERR = _LazyConsole(stderr=False), _LazyConsole(stderr=True)
out: Console = _STDOUT  # type: ignore[assignment]
err: Console = _STDERR  # type: ignore[assignment]


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def fail(message: str, code: int) -> click.exceptions.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return click.exceptions.Exit(code)


def handles_errors(fn: F) -> F:
    """Library errors become one red line on stderr and their documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClipsearchError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; what was committed is kept, rerun to continue", 130) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a raw traceback
            from clipsearch.index.faults import translate

            mapped = translate(exc, None)  # an index-file fault that reached here outside Library
            if mapped is not None:
                raise fail(str(mapped), mapped.exit_code) from None
            log = _write_crash_log(exc)
            where = f"; details in {log}" if log else ""
            raise fail(f"internal error ({type(exc).__name__}: {str(exc)[:200]}){where}. Please report it.",
                       INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _write_crash_log(exc: BaseException) -> Path | None:
    """The traceback goes to a file, so the terminal gets one line and a bug report gets everything."""
    import datetime as dt
    import traceback

    try:
        folder = config.data_home() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"clipsearch {__version__}\nargv: {sys.argv!r}\n\n"
                        + "".join(traceback.format_exception(exc)), encoding="utf-8")
        return path
    except OSError:
        return None


def library(index: Path | None, model: str | None = None, device: str | None = None,
            precision: str | None = None, quiet: bool = False) -> Library:
    from clipsearch.library import Library

    return Library(index, model=model, device=device, precision=precision, notify=None if quiet else note)


def note(message: str) -> None:
    err.print(f"[dim]{escape(message)}…[/]")


def print_json(payload: object) -> None:
    """JSON, indented; coloured on a terminal."""
    import json

    text = json.dumps(payload, ensure_ascii=False, indent=2)
    if sys.stdout.isatty():
        out.print_json(text)
    else:
        sys.stdout.write(text + "\n")


def check_writable(path: Path | None, what: str) -> None:
    """A file the user named for output: its folder must exist and take writes, checked before the work."""
    if path is None:
        return
    folder = path.expanduser().absolute().parent
    if not folder.is_dir():
        raise fail(f"cannot write {what} {path}: no folder {folder}", 2)
    if path.is_dir():
        raise fail(f"cannot write {what} {path}: it is a folder", 2)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise fail(f"cannot write {what} {path}: permission denied", 2)


def write_user_file(path: Path, text: str, what: str) -> None:
    """Write an output file the user named, and say where it went; a failure names the path (exit 2)."""
    try:
        path.expanduser().write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {what} {path}: {exc.strerror or exc}", 2) from None
    err.print(f"wrote {what} {escape(str(path.expanduser().absolute()))}", markup=False)


def print_table(table: Any) -> None:
    """On a terminal as fitted to it; in a pipe as wide as the table is, so no path is ever broken."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.console import Console

    from clipsearch.cli.fit import width_of

    Console(file=sys.stdout, width=width_of(table), highlight=False, color_system=None).print(table)


class RichProgress:
    """Long work's progress, drawn on stderr; invisible when stderr is not a terminal."""

    def __init__(self, quiet: bool, verb: str = "indexing") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.verb = verb
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[skipped]} skipped"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=_STDERR.get(), transient=True,
            disable=quiet or not _STDERR.get().is_terminal)
        self.task = self.progress.add_task(verb, total=None, skipped=0)

    def found(self, total: int) -> None:
        # The model loads between the scan and the first photo: seconds that would read as a stall.
        self.progress.update(self.task, total=total, description="loading the model…" if total else self.verb)

    def advance(self, done: int, skipped: int) -> None:
        self.progress.update(self.task, completed=done, skipped=skipped, description=self.verb)

