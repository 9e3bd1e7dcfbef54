"""Exporting the towers to ONNX off the critical path: a detached, niced process per index.

The first index of new weights used to export the text tower inline: ~17 s and an fp32 copy of the
model on top of the run's own (issue 22). Now `after_write` (Library, after every write) links the
export in from the cache of these weights (text_export: keyed by their sha256; milliseconds) when
there is one, and otherwise starts `python -m clipsearch.model.background_export`, which loads the
index's weights from this machine (never a download), exports the text tower, then the image tower
(image_export.py) if the index has none, one after the other: never two full model copies at once.
The index run returns as soon as its own data is committed; until the export lands, text queries
take the torch path (encoders.py), as they would without one. The first torch-answered
`query --image` of an outside photo starts the same process for the image tower alone.

One exporter per index at a time: MARKER holds its pid (a dead pid, or a marker older than STALE_S,
is stale and ignored). Exports of the same weights for two indexes wait for each other (a lock
beside the cache), so the second links the first's result. Each export is written to a temporary
folder and renamed into place, so a kill leaves no half folder (index/vectors.remove_orphan_temps
deletes a dead writer's temporary folder). A model that cannot be exported, or whose export does
not answer like open_clip, is recorded in DECLINED and not tried again for those weights. For the
image graph an index run built without torch (vit_graph.py) that record is also the verdict that
its photos' vectors are wrong: the next index run embeds them again (index/unchecked.py).

$CLIPSEARCH_EXPORT=inline keeps the text export in the indexing run as before (for a folder that
will be read-only later, or a script that wants the fast path as soon as `index` returns);
$CLIPSEARCH_TEXT_MODEL=off and $CLIPSEARCH_IMAGE_MODEL=off switch either export off.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipsearch import config, failpoints, paths
from clipsearch.model import image_tower, text_tower
from clipsearch.model.identity import ModelIdentity

ENV_MODE = "CLIPSEARCH_EXPORT"
MARKER = ".model-export.running"  # JSON: pid, host, towers, started
DECLINED = ".model-export.declined"  # JSON: tower -> the weights' sha256 it was not exported for
LOG = ".model-export.log"  # the last background exporter's stderr, for whoever wonders why
STALE_S = 3600.0  # ViT-L's two towers on a slow laptop, niced: well under this
TOWERS = ("text", "image")


def inline() -> bool:
    return os.environ.get(ENV_MODE, "background").strip().lower() == "inline"


def image_enabled() -> bool:
    return os.environ.get("CLIPSEARCH_IMAGE_MODEL", "on").strip().lower() not in ("0", "off", "no", "false")


def after_write(index_dir: Path, recorded: ModelIdentity, loaded: Any, may_load: bool, device: str | None,
                precision: str | None, notify: Callable[[str], None] | None) -> None:
    """After a write: the exports the index lacks, linked from the cache, started in the background,
    or (inline mode) the text tower exported here from `loaded` as text_export.ensure does."""
    from clipsearch.model import text_export

    sha = recorded.weights_sha256
    text = config.text_model_enabled() and not text_tower.available(index_dir, sha)
    if text and text_export.link_cached(sha, index_dir):  # another index of these weights exported it
        text = False
    if inline():
        if text:
            text_export.ensure(index_dir, recorded, loaded, may_load, device, precision, notify)
        return
    wanted = [t for t in (("text",) if text else ()) + (("image",) if _image_wanted(index_dir, sha) else ())
              if declined(index_dir).get(t) != sha]
    if wanted and start(index_dir, recorded.name, sha, wanted) and "text" in wanted and notify is not None:
        notify("preparing the text encoder in the background (once per model); until it is ready, "
               "text queries load the full model")


def _image_wanted(index_dir: Path, sha: str) -> bool:
    return image_enabled() and not image_tower.available(index_dir, sha)


def declined(index_dir: Path) -> dict[str, str]:
    """The towers an exporter gave up on, with the weights they were for."""
    try:
        got = json.loads((index_dir / DECLINED).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def _decline(index_dir: Path, tower: str, sha: str) -> bool:
    """Record `tower` declined for these weights, durably (fsynced, renamed, the folder fsynced): for
    the built graph this is the verdict that sends its photos to be embedded again
    (vit_graph.rejected_mark). False where it could not be written."""
    record = json.dumps({**declined(index_dir), tower: sha})

    def write(tmp: Path) -> None:
        tmp.write_text(record)

    try:
        paths.replace_atomically(index_dir / DECLINED, write)
    except OSError:
        return False
    paths.fsync_dir(index_dir)
    return True


def running(index_dir: Path) -> tuple[str, ...]:
    """The towers a live background exporter of this index is working on; () when none runs."""
    marker = index_dir / MARKER
    try:
        age = time.time() - marker.stat().st_mtime
        info = json.loads(marker.read_text() or "{}")
    except (OSError, ValueError):
        return ()
    if age > STALE_S or not isinstance(info, dict):
        return ()
    # On another host (a shared folder) only the age can tell.
    if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
        return ()  # killed or crashed: stale
    return tuple(str(t) for t in info.get("towers", TOWERS))


def _alive(pid: object) -> bool:
    try:
        number = int(str(pid))
        if number <= 0:
            return False  # 0 and below would name process groups
        os.kill(number, 0)
    except PermissionError:
        return True  # another user's
    except (OSError, ValueError, OverflowError):
        return False
    try:  # a zombie (exited, not yet reaped by a long-lived parent such as `serve`) is dead too
        return Path(f"/proc/{number}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill's answer stands


def _write_marker(index_dir: Path, pid: int, towers: list[str]) -> None:
    tmp = index_dir / f"{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "towers": towers, "started": time.time()}))
    os.replace(tmp, index_dir / MARKER)


def start(index_dir: Path, model_name: str, weights_sha256: str, towers: list[str]) -> bool:
    """Start the exporter detached (niced, silent) for `towers`; False when one runs already.

    Detached so the command that starts it exits without waiting; the marker, created exclusively,
    keeps two commands from starting two exporters.
    """
    marker = index_dir / MARKER
    if running(index_dir):
        return False
    with contextlib.suppress(OSError):
        marker.unlink()  # stale
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "towers": towers}).encode())
        os.close(fd)
    except OSError:
        return False  # another command won the race, or the folder is read-only
    try:
        with open(index_dir / LOG, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "clipsearch.model.background_export", str(index_dir),
                                     model_name, weights_sha256, *towers], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        _write_marker(index_dir, proc.pid, towers)  # before it can finish: it needs seconds to import torch
    except OSError:
        marker.unlink(missing_ok=True)
        return False
    return True


@contextlib.contextmanager
def _weights_lock(sha: str) -> Iterator[None]:
    """Held while these weights' text tower is exported for some index; released when its process
    ends, however it ends. Without fcntl (Windows) or a writable cache, no lock: at worst two
    indexes export the same weights at once, as before the cache."""
    try:
        import fcntl

        path = config.cache_home() / "text-models" / f"{sha}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - held for the with block
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _image(index_dir: Path, sha: str, embedder: Callable[[], Any]) -> bool:
    """The image tower: a graph an index run built without torch (vit_graph.py) checked against
    open_clip, else (or when it does not answer alike) the torch export; False when neither is had."""
    from clipsearch.model import image_export, vit_graph

    built = vit_graph.built(index_dir, sha)
    rejected = declined(index_dir).get(vit_graph.BUILT) == sha  # an earlier check's verdict stands
    if built and not rejected and image_export.verify_built(embedder(), index_dir):
        return True
    if built and not rejected:
        # The verdict first, durably: it keeps index runs off this graph and sends the photos it
        # embedded (their vectors carry its mark, index/unchecked.py) to be embedded again by the
        # next run. Unrecorded, the graph is not replaced either, so the next exporter checks it
        # again rather than leaving those photos unnoticed.
        if not _decline(index_dir, vit_graph.BUILT, sha):
            raise OSError(f"could not record in {DECLINED} that the built image tower was rejected")
        failpoints.hit("graph-rejected")  # the verdict recorded, the graph not yet replaced
        print("the image tower built without torch does not answer like open_clip: the next `clipsearch index` "
              "embeds the photos it embedded again", file=sys.stderr)  # into LOG
    return bool(image_export.export(embedder(), index_dir))


def _main(index_dir: Path, model_name: str, weights_sha256: str, towers: list[str]) -> int:
    """The background export: the index's weights from this machine, fp32 on the CPU, one tower at a time."""
    from clipsearch.model import names, text_export
    from clipsearch.model.embedder import Embedder

    with contextlib.suppress(OSError):
        os.nice(10)  # behind whatever the user runs next
    emb: Any = None

    def embedder(tower: str) -> Any:
        """The index's model with `tower` in memory and, where it loaded lean, only that one: the
        text tower's export never sits beside an fp32 image tower it does not use."""
        nonlocal emb
        if emb is None:
            emb = Embedder(names.parse(model_name), "cpu", "fp32", download=False)
            if emb.identity.weights_sha256 != weights_sha256:
                raise RuntimeError("the weights on this machine are not the index's")
        if emb.lean:
            import torch

            from clipsearch.model import lean_load

            has_image = lean_load.IMAGE in lean_load.loaded_towers(emb.model)
            if tower == "text" and has_image:
                emb.model.visual.to("meta")
            elif tower == "image" and not has_image:
                lean_load.materialise(emb.model, emb.weights_path, (lean_load.IMAGE,), torch.float32, "cpu")
        return emb

    prepare_labels = False
    try:
        for tower in towers:
            with contextlib.suppress(OSError):
                os.utime(index_dir / MARKER)  # alive: the next tower starts
            if tower == "text" and config.text_model_enabled():
                with _weights_lock(weights_sha256):  # another index's export of these weights may finish first
                    if text_tower.available(index_dir, weights_sha256) or text_export.link_cached(
                            weights_sha256, index_dir):
                        continue
                    done = text_export.export(embedder(tower), index_dir)
                prepare_labels = done
            elif tower == "image" and image_enabled() and not image_tower.available(index_dir, weights_sha256):
                done = _image(index_dir, weights_sha256, lambda: embedder("image"))
            else:
                continue
            if not done:
                _decline(index_dir, tower, weights_sha256)
        if prepare_labels:  # last: the towers' exports first, as queries wait for them
            _prepare_labels(index_dir)
        return 0
    except Exception:  # noqa: BLE001 - a failed export only costs speed: queries keep the torch path
        import traceback

        traceback.print_exc()  # into LOG
        return 1
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads((index_dir / MARKER).read_text()).get("pid") == os.getpid():
                (index_dir / MARKER).unlink()


def _prepare_labels(index_dir: Path) -> None:
    """The label cache's bf16 graph compiled and self-checked now, not in the first `tag` run
    (0.3-0.5 s of it on 2 cores, docs/benchmarks.md); optional like the exports: a failure leaves
    that run to do it."""
    from clipsearch.model import prefix_tower

    try:
        prefix_tower.prepare(index_dir / text_tower.FOLDER)
    except Exception:  # noqa: BLE001 - no openvino extra, a CPU it cannot compile for: the tag run decides
        import traceback

        traceback.print_exc()  # into LOG


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]))
