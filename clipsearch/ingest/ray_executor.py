"""The Ray executor: decoding and embedding on a Ray cluster, results streamed back in scan order.

Ray Data's documented batch-inference pattern: the files to index become a dataset of small blocks,
`map_batches` hands each block to a pool of actors that each hold one loaded model, and the driver
streams the results back (`iter_batches`) and commits them exactly as local indexing does
(`pipeline.run`). An actor runs `local_executor.embed_files`, the same decode-and-embed code as local
indexing, on its block: one code path, two executors.

Ray is an optional extra (`clipsearch[ray]`): nothing here imports it until a run starts, so the
core install, and every command that does not pass `--ray`, never loads it.

Crash behaviour. A lost worker is Ray Data's to handle: it restarts the actor and reruns the block
(its defaults: unlimited restarts and retries), and the driver drops any result it already has. A
killed driver loses only what it had not committed; the next run's plan skips what was committed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch import failpoints
from clipsearch.errors import ClipsearchError, ClusterError, ModelMismatchError, UsageError
from clipsearch.index.records import ImageRecord, SkipRecord, VideoFrames
from clipsearch.ingest import pipeline, scan
from clipsearch.ingest.local_executor import BATCH, embed_files
from clipsearch.ingest.pipeline import Result
from clipsearch.model import names
from clipsearch.model.embedder import Embedder
from clipsearch.model.onnx_indexing import ImageEmbedder

LOCAL = "local"
# Only paths and vectors travel through Ray's object store: a small one keeps a local runtime light
# on a shared machine (Ray's default takes 30% of the RAM).
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
# A block is what one actor call processes, and what Ray redoes when a worker is lost. At most one
# commit's worth (256 files) keeps losses and per-call overhead small; a small run is cut into about
# 16 blocks so that every worker gets some.
BLOCK_MAX = pipeline.COMMIT_EVERY
DEFAULT_CPUS_PER_WORKER = 4


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. `address` None: $RAY_ADDRESS if set, else a new local runtime on this machine."""

    address: str | None = None
    workers: int | None = None  # a fixed number of actors; None: as many as the cluster fits, started as needed
    cpus_per_worker: float | None = None  # None: 4, or fewer on smaller nodes (decoding threads use them)
    gpus_per_worker: float = 0.0  # each actor's share of a GPU (1: one GPU each, 0.5: two actors per GPU)


@dataclass(frozen=True)
class WorkerSettings:
    """What every actor needs to load the driver's model and decode like the driver."""

    model: str  # a model name as names.parse reads it; local paths are absolute
    weights_sha256: str
    device: str | None
    precision: str | None
    max_pixels: int
    threads: int


class EmbedWorker:
    """One Ray actor: loads the model once, then runs `local_executor.embed_files` on each block it is given."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.error: ClipsearchError | None = None
        try:
            self.embedder = Embedder(names.parse(settings.model), settings.device, settings.precision)
            got = self.embedder.identity
            if got.weights_sha256 != settings.weights_sha256:
                raise ModelMismatchError(
                    f"a Ray worker on {socket.gethostname()} loaded {got.describe()}, but this index is being "
                    f"built with weights sha256 {settings.weights_sha256[:12]}…; give every node the same weights")
        except ClipsearchError as exc:
            # Raised from the first block instead: Ray passes a task's exception to the driver intact,
            # while an actor that fails to start only leaves a message.
            self.error = exc

    def __call__(self, block: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        if self.error is not None:
            raise self.error
        s = self.settings
        files = [scan.FoundFile(os.fsdecode(bytes(p)), int(size), int(mtime))
                 for p, size, mtime in zip(block["path"], block["size"], block["mtime_ns"], strict=True)]
        positions = block["i"]
        done = 0
        out: list[Result] = []
        for result in embed_files(files, self.embedder, s.max_pixels, s.threads):
            out.append(result)
            if len(out) == BATCH:
                failpoints.hit("ray-worker")  # a worker lost mid-block: the tests check that Ray redoes it
                yield encode(out, positions[done:done + len(out)], self.embedder.identity.embed_dim)
                done += len(out)
                out = []
        if out:
            yield encode(out, positions[done:], self.embedder.identity.embed_dim)


def encode(results: list[Result], positions: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """Results as columns Ray can carry: each file's place in the run, its record's fields as JSON, its vector."""
    meta = []
    vectors = np.zeros((len(results), dim), dtype=np.float32)
    for k, r in enumerate(results):
        if r.skip is not None:
            meta.append(json.dumps({"skip": r.skip.reason, "detail": r.skip.detail}))
        else:
            assert r.record is not None and r.vector is not None
            fields = r.record.fields()
            if r.video is not None:  # a video's frames travel with it (a few dozen vectors at most)
                v = r.video
                fields["video"] = {"times": list(v.times), "vectors": v.vectors.tolist(), "duration_s": v.duration_s,
                                   "fps": v.fps, "rotation": v.rotation, "note": v.note}
            meta.append(json.dumps(fields))
            vectors[k] = r.vector
    return {"i": np.asarray(positions, dtype=np.int64), "meta": np.array(meta, dtype=object), "vector": vectors}


def decode(batch: dict[str, np.ndarray], files: list[scan.FoundFile]) -> Iterator[tuple[int, Result]]:
    """The driver's side of `encode`: (position, Result) for each file in a returned batch."""
    for i, meta, vector in zip(batch["i"], batch["meta"], batch["vector"], strict=True):
        f = files[int(i)]
        fields = json.loads(str(meta))
        if "skip" in fields:
            yield int(i), Result(f, skip=SkipRecord(f.path, f.size, f.mtime_ns, fields["skip"], fields["detail"]))
        else:
            v = fields.get("video")
            video = None if v is None else VideoFrames(tuple(v["times"]), np.asarray(v["vectors"], np.float32),
                                                       v["duration_s"], v["fps"], v["rotation"], v["note"])
            yield int(i), Result(f, record=ImageRecord.from_fields(f.path, fields),
                                 vector=np.asarray(vector, dtype=np.float32), video=video)


def in_order(batches: Iterator[dict[str, np.ndarray]], files: list[scan.FoundFile]) -> Iterator[Result]:
    """Results in the files' order, whatever order the batches come in; a redone block's repeats are dropped.

    Ray Data is asked to preserve order, so nothing waits here in practice; ids, which follow commit
    order, must not depend on that.
    """
    expected = 0
    waiting: dict[int, Result] = {}
    for batch in batches:
        for i, result in decode(batch, files):
            if i >= expected:
                waiting.setdefault(i, result)
        while expected in waiting:
            yield waiting.pop(expected)
            expected += 1
    if expected != len(files):
        raise ClusterError(f"Ray returned results for {expected} of {len(files)} files; what was committed is "
                           "kept, rerun to finish")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--ray needs Ray on this machine: pip install 'clipsearch[ray]'") from None
    # Ray Data logs every run's plan, and each worker error's traceback, on stderr; the CLI reports
    # what matters in one line, and Ray Data's log file under the session folder keeps the details.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)
    return ray


def _block_rows(n: int) -> int:
    per_block = max(BATCH, min(BLOCK_MAX, -(-n // 16)))
    return -(-per_block // BATCH) * BATCH  # whole model batches


def _blocks(files: list[scan.FoundFile]) -> list[Any]:
    import pyarrow as pa

    rows = _block_rows(len(files))
    tables = []
    for start in range(0, len(files), rows):
        chunk = files[start:start + rows]
        tables.append(pa.table({
            "i": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
            # Bytes, not text: a file name that is not UTF-8 must reach the worker exactly.
            "path": pa.array([os.fsencode(f.path) for f in chunk], type=pa.binary()),
            "size": pa.array([f.size for f in chunk], type=pa.int64()),
            "mtime_ns": pa.array([f.mtime_ns for f in chunk], type=pa.int64()),
        }))
    return tables


def _cause(exc: BaseException) -> ClipsearchError | None:
    """A clipsearch error raised on a worker, found inside the exceptions Ray and Ray Data wrap it in."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # RayTaskError keeps the worker's exception here
        if isinstance(inner, ClipsearchError):
            # Ray Data appends retry advice to the message; clipsearch's messages are one line.
            return type(inner)(str(inner).splitlines()[0])
        e = e.__cause__ or e.__context__
    return None


def _gist(exc: BaseException) -> str:
    """Ray's error messages run to tracebacks: their first line, and the last one, which names the cause."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    if not lines:
        return "no details"
    first, last = lines[0][:200], lines[-1][:200]
    return first if first == last else f"{first} … {last}"


class RayExecutor:
    """`pipeline.Executor` on Ray: starts (or joins) Ray when there is work, and stops what it started."""

    def __init__(self, options: RayOptions, device: str | None = None, precision: str | None = None) -> None:
        self.options = options
        self.device = device
        self.precision = precision
        self.embed_seconds = 0.0  # spent on the workers; not measured from here
        self.ray = _import_ray()  # now: a missing extra is reported before any scanning

    def results(self, files: list[scan.FoundFile], embedder: ImageEmbedder,
                max_pixels: int) -> Generator[Result, None, None]:
        ray = self.ray
        started = self._connect(ray)
        try:
            cpus, gpus, workers = self._sizes(ray)
            settings = WorkerSettings(embedder.identity.name, embedder.identity.weights_sha256, self.device,
                                      self.precision, max_pixels, max(1, int(cpus)))
            ds = ray.data.from_arrow(_blocks(files)).map_batches(
                EmbedWorker, fn_constructor_kwargs={"settings": settings}, batch_size=None, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers) if self.options.workers
                else ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                num_cpus=cpus, num_gpus=gpus or None)
            ds.context.execution_options.preserve_order = True
            ds.context.enable_progress_bars = False
            try:
                yield from in_order(ds.iter_batches(batch_size=None, batch_format="numpy"), files)
            except Exception as exc:  # Ray wraps worker errors in its own types
                cause = _cause(exc)
                if cause is not None:
                    raise cause from None
                if isinstance(exc, ClipsearchError) or not type(exc).__module__.startswith("ray."):
                    raise
                raise ClusterError(f"the Ray run failed ({type(exc).__name__}: {_gist(exc)}); what was committed "
                                   "is kept, rerun to continue") from exc
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster (or start a local runtime); False when the caller had already started Ray."""
        if ray.is_initialized():
            return False
        address = self.options.address or os.environ.get("RAY_ADDRESS") or LOCAL
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        if address == LOCAL:
            kwargs.update(num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"could not start or reach Ray at {address}: {str(exc).splitlines()[0][:300]}") from None
        return True

    def _sizes(self, ray: Any) -> tuple[float, float, int]:
        """(CPUs per actor, GPUs per actor, most actors): what the options ask, capped to what the cluster has.

        With --ray-workers the count is taken as given: an autoscaling cluster may not have the nodes yet.
        """
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        biggest = max((float(r.get("CPU", 0)) for r in nodes), default=1.0)
        cpus = self.options.cpus_per_worker or min(float(DEFAULT_CPUS_PER_WORKER), max(1.0, biggest))
        gpus = self.options.gpus_per_worker
        if self.options.workers:
            return cpus, gpus, self.options.workers
        total = ray.cluster_resources()
        fit = int(float(total.get("CPU", 0)) // cpus)
        if gpus > 0:
            fit = min(fit, int(float(total.get("GPU", 0)) // gpus))
        if fit < 1:
            raise UsageError(f"the Ray cluster has room for no worker of {cpus:g} CPUs and {gpus:g} GPUs "
                             f"(it has {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs); pass smaller "
                             "--ray-cpus/--ray-gpus, or --ray-workers for a cluster that is still scaling up")
        return cpus, gpus, fit
