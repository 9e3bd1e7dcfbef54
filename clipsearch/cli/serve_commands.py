"""`serve`: the local web gallery (clipsearch/serve/, docs/serve.md)."""

from __future__ import annotations

from pathlib import Path

import click

from clipsearch import paths
from clipsearch.cli.common import err, escape, handles_errors
from clipsearch.cli.options import PATH, index_option, model_option
from clipsearch.errors import UsageError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but localhost exposes the gallery to the network (still "
              "behind the token).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--open", "open_browser", is_flag=True, help="Open the gallery in the default browser.")
@click.option("--watch", is_flag=True, help="Keep the index fresh: index new, changed and deleted photos under the "
              "index's folders as they happen.")
@click.option("--root", "roots", type=PATH, multiple=True,
              help="With --watch: watch these folders (repeatable) [default: the folders the index covers].")
@index_option
@model_option
@handles_errors
def serve(host: str, port: int, open_browser: bool, watch: bool, roots: tuple[Path, ...], index_path: Path | None,
          model: str | None) -> None:
    """A private web gallery over the index: search as you type, photos, tags, duplicates, status."""
    import os
    import socket

    try:
        import uvicorn

        from clipsearch.serve import Gallery, create_app
    except ImportError as exc:
        raise UsageError(f"`clipsearch serve` needs the serve extra: pip install 'clipsearch[serve]' ({exc})") from None
    from clipsearch import photos
    from clipsearch.library import Library

    lib = Library(index_path, model=model)
    lib.status()  # a missing index is an error now, not on the first request
    watch_roots = None
    if watch:
        watch_roots = [paths.resolve(r) for r in roots] or photos.roots(lib)
        if not watch_roots:
            raise UsageError("nothing to watch: the index has no photos yet; index a folder first or pass --root")
        if not all(os.path.isdir(r) for r in watch_roots):
            missing = next(r for r in watch_roots if not os.path.isdir(r))
            raise UsageError(f"cannot watch {missing}: not a folder")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    bound = sock.getsockname()[1]
    gallery = Gallery(index_path, model=model, watch_roots=watch_roots)
    app = create_app(gallery, extra_hosts=() if host in LOCAL_HOSTS or host in ("0.0.0.0", "::") else (host,),
                     cookie=f"clipsearch_token_{bound}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{bound}/?token={gallery.token}"
    if host not in LOCAL_HOSTS:
        err.print(f"[bold yellow]warning:[/] listening on {escape(host)}: other machines can reach this gallery; "
                  "anyone with the link below sees your photos. Plain HTTP: use it only on a network you trust.")
    if watch_roots is not None:
        err.print(f"watching {len(watch_roots)} folder(s) for changes", markup=False)
    err.print(f"clipsearch gallery: {url}", markup=False)
    err.print("press Ctrl+C to stop", markup=False)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    # Live-event streams stay open; on Ctrl+C they are cut after 2 s instead of being waited for.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
