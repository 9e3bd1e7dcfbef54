"""The `clipsearch` command: parse arguments, call the library, render. The only package that prints.

Exit codes (docs/cli.md): 0 success, 1 nothing found, 2 usage error, 3 index missing/locked/damaged,
4 model unavailable or mismatched, 5 Ray cluster failure, 70 internal error, 130 interrupted.

Built on click rather than Typer: Typer 0.29 imports pydantic and validates every parameter
through it, 0.15 s of each start, a third of a cold query's budget (measured, docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from clipsearch._version import __version__
from clipsearch.cli.common import err
from clipsearch.cli.library_commands import duplicates, forget, index, repair, status
from clipsearch.cli.model_commands import models
from clipsearch.cli.search_commands import query, similar
from clipsearch.cli.serve_commands import serve
from clipsearch.cli.shard_commands import embed, merge
from clipsearch.cli.tag_commands import tag, tags


class _InOrder(click.Group):
    """Commands listed in the order people use them, not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's main, with usage errors as `error: …` lines like every other error (cli/usage.py)."""
        from clipsearch.cli import usage

        return usage.run_group(self, click.Group.main, args, kwargs)


@click.group(cls=_InOrder, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="clipsearch", message="%(prog)s %(version)s",
                      help="Show the version and exit.")
def app() -> None:
    """Search your photos by what is in them, with CLIP, on your own machine."""


for command in (index, forget, query, similar, tag, tags, duplicates, status, repair, serve, embed, merge,
                models):
    app.add_command(command)


def main() -> None:
    """Console-script entry point."""
    try:
        app.main(prog_name="clipsearch")
    except KeyboardInterrupt:
        err.print("[bold red]error:[/] interrupted")
        sys.exit(130)
    except SystemExit as done:
        _exit_now(done)
        _skip_library_destructors(done)
        raise


def _exit_now(done: SystemExit) -> None:
    """End a light command without tearing the interpreter down: 0.1 s of a cold query went there.

    Only when nothing that cleans up at exit was loaded (torch, Ray) and no other thread runs:
    everything a command writes is committed and closed before it returns, so skipping the
    interpreter's finalisation loses nothing but the time.
    """
    import os
    import threading

    if {"torch", "ray"} & sys.modules.keys() or threading.active_count() > 1:
        return
    code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    if not isinstance(done.code, int | None):
        print(done.code, file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        return  # let the normal exit report it as it always has
    os._exit(code)


def _skip_library_destructors(done: SystemExit) -> None:
    """After a command that loaded torch: let Python finalise as usual (its atexit handlers, files
    closed), then end the process before the C libraries' own exit-time destructors run.

    A CUDA build of torch (what pip installs on Linux) loads CUDA's libraries even where no GPU is
    used, and their static destructors touch ~125 MB at exit that nothing uses again (`python -c
    "import torch"`: 519 MB resident at the end of Python's finalisation, 648 MB peak when the
    process is gone): that exit, not the work, was an `index` run's peak RSS (docs/benchmarks.md,
    "Index runs without OpenVINO"). glibc's exit() runs its handlers last-registered first, so
    these two run before every library's: C stdio flushed, then _exit with the command's status.
    """
    import os

    if not sys.platform.startswith("linux") or "torch" not in sys.modules or "ray" in sys.modules:
        return  # Ray's workers and drivers keep their own exit paths
    code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        return  # Python's own exit reports it (status 120), as it always has
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        register, end, flush = libc.__cxa_atexit, libc._exit, libc.fflush
    except (OSError, AttributeError):
        return  # not glibc: the libraries' destructors run, which costs memory, not correctness
    pointer = ctypes.c_void_p
    register.argtypes = [pointer, pointer, pointer]
    if os.environ.get("CLIPSEARCH_EXIT_DESTRUCTORS", "").strip().lower() in ("1", "on", "yes", "true"):
        return  # the libraries' destructors wanted (a debugger, a profiler that writes at exit)
    register(ctypes.cast(end, pointer), pointer(code & 0xFF), None)
    register(ctypes.cast(flush, pointer), None, None)  # runs first: fflush(NULL)


__all__ = ["app", "main"]
