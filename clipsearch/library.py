"""`Library`: the public facade that wires scan, decode, embed, store and search together.

    from clipsearch import Library
    lib = Library()                       # the default index, its recorded model
    lib.index(["~/Photos"])
    for hit in lib.search("my cute dog", top=5):
        print(hit.score, hit.path)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipsearch import duplicates, indexer, shards, tagging
    from clipsearch.ray_executor import RayOptions

from clipsearch import config, models, scan, text_model
from clipsearch import query as query_mod
from clipsearch import search as search_mod
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.embedder import Embedder, ModelIdentity
from clipsearch.errors import (
    ClipsearchError,
    IndexLockedError,
    IndexMissingError,
    ModelMismatchError,
    UsageError,
)
from clipsearch.store import Store, check_same_model, now, os_path
from clipsearch.vectors import VectorIndex, remove_orphan_temps

LOCK_NAME = "index.lock"
LOCK_OWNER = "index.lock.owner"


_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heic": "heif", "jp2": "jpeg2000",
                   "ppm": "ppm", "pgm": "ppm", "pbm": "ppm"}


@dataclass
class TagSummary:
    """What a tagging run did."""

    photos: int
    tagged: int
    counts: dict[str, int]
    label_set: str
    labels: int
    method: str
    sidecars_changed: int = 0
    sidecars: list[str] | None = None
    sidecar_errors: list[str] | None = None

    def as_dict(self) -> dict[str, object]:
        return {"photos": self.photos, "tagged": self.tagged, "untagged": self.photos - self.tagged,
                "counts": self.counts, "label_set": self.label_set, "labels": self.labels,
                "threshold_method": self.method, "sidecars_changed": self.sidecars_changed,
                "sidecar_errors": self.sidecar_errors or []}


@dataclass
class QueryResult:
    """What a query found, the query as parsed, and how the relevance cutoff treated it."""

    terms: list[query_mod.Term]
    results: list[search_mod.SearchResult]
    ranking: search_mod.Ranking


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
    text_model: bool = False  # queries can embed text without torch (text_model.py)

    def as_dict(self) -> dict[str, object]:
        return {
            "index": str(self.path),
            "model": None if self.model is None else {
                "name": self.model.name, "embed_dim": self.model.embed_dim,
                "weights_sha256": self.model.weights_sha256},
            "images": self.images, "skipped": self.skipped, "bytes_on_disk": self.bytes_on_disk,
            "last_run_at": self.last_run_at, "last_run": self.last_run, "vector_cache": self.vector_cache,
            "text_model": self.text_model,
        }


class Library:
    """One index folder and the model that goes with it.

    `model` is a name as `clipsearch models list` shows (None: the model the index was built with,
    or the default for a new index). Nothing heavy is loaded until it is needed. `notify` hears a
    line before anything slow that the caller did not ask for by name (a model download).
    """

    def __init__(self, index: str | os.PathLike[str] | None = None, model: str | None = None,
                 device: str | None = None, precision: str | None = None, download: bool = True,
                 notify: Callable[[str], None] | None = None) -> None:
        self.path = config.index_dir(index)
        self._model_name = config.model_name(model)
        self._device = config.device_name(device)
        self._precision = precision
        self._download = download
        self._notify = notify
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None  # kept between searches while its generation is current

    # --- model ----------------------------------------------------------------------------------

    def _recorded_model(self) -> ModelIdentity | None:
        try:
            store = Store.open(self.path)
        except Exception:  # noqa: BLE001 - no index (or no readable one) means nothing is recorded
            return None
        try:
            return store.model_identity()
        finally:
            store.close()

    def model_spec(self) -> models.ModelSpec:
        """The model this library uses: the one asked for, else the index's, else the default."""
        if self._model_name:
            return models.parse(self._model_name)
        recorded = self._recorded_model()
        return models.parse(recorded.name if recorded else config.DEFAULT_MODEL)

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.model_spec(), self._device, self._precision, self._download,
                                      self._notify)
        return self._embedder

    # --- indexing -------------------------------------------------------------------------------

    def index(self, paths: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str] = (),
              follow_symlinks: bool = False, include_hidden: bool = False, rebuild: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, wait: bool = False,
              progress: indexer.Progress | None = None, ray: RayOptions | None = None) -> indexer.IndexSummary:
        """Add new and changed photos under `paths`, drop deleted ones, keep moved ones' vectors.

        With `ray`, decoding and embedding run on a Ray cluster (ray_executor.py); the scan, the plan
        and every commit stay here, so the index ends up the same either way.
        """
        given = [os.fspath(p) for p in paths]
        roots = [os.path.abspath(os.path.expanduser(p)) for p in given]
        if not roots:
            raise UsageError("name at least one folder or photo to index")
        for root, name in zip(roots, given, strict=True):
            if not os.path.lexists(root):  # before anything is created: a typo leaves no empty index
                raise UsageError(f"no such file or folder: {name}")
        executor = None
        if ray is not None:
            from clipsearch.ray_executor import RayExecutor

            executor = RayExecutor(ray, self._device, self._precision)
        with self._write_lock(wait):
            return self._index_locked(roots, tuple(exclude), follow_symlinks, include_hidden, rebuild,
                                      max_pixels, progress, executor)

    @contextlib.contextmanager
    def _write_lock(self, wait: bool) -> Iterator[None]:
        """The index's single-writer lock, with a note of who holds it for the error others get."""
        import socket

        import filelock

        self.path.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path / LOCK_NAME), timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise IndexLockedError(f"the index at {self.path} is being updated by {self._lock_owner()}; "
                                   "wait for it, or pass --wait") from None
        try:
            (self.path / LOCK_OWNER).write_text(json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}))
            yield
        finally:
            with contextlib.suppress(OSError):
                (self.path / LOCK_OWNER).unlink()
            lock.release()

    def _lock_owner(self) -> str:
        try:
            info = json.loads((self.path / LOCK_OWNER).read_text())
            return f"process {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "another clipsearch process"

    def _index_locked(self, roots: list[str], exclude: tuple[str, ...], follow: bool, hidden: bool,
                      rebuild: bool, max_pixels: int, progress: indexer.Progress | None,
                      executor: indexer.Executor | None) -> indexer.IndexSummary:
        started = now()
        remove_orphan_temps(self.path)
        store = Store.open(self.path, create=True)
        try:
            recorded = store.model_identity()
            if recorded is not None and self._model_name and not rebuild:
                wanted = models.parse(self._model_name).name
                if wanted != recorded.name:
                    raise ModelMismatchError(
                        f"this index was built with {recorded.name}, not {wanted}; pass --rebuild to re-embed "
                        "every photo with the new model, or use another --index")
            if rebuild:
                store.reset()
            problems = scan.ScanProblems()
            found = list(scan.walk(roots, exclude, follow, hidden, problems))

            def get_embedder() -> Embedder:
                emb = self.embedder()
                store.bind_model(emb.identity)
                return emb

            from clipsearch import indexer  # decoding and the pipeline: not needed by queries

            summary = indexer.run(store, get_embedder, roots, found, problems, max_pixels, progress,
                                  executor=executor)
            if store.model_identity() is None and self._embedder is not None:
                store.bind_model(self._embedder.identity)
            if rebuild:
                text_model.remove(self.path)
            emb = self._embedder
            if (emb is not None and config.text_model_enabled()
                    and not text_model.available(self.path, emb.identity.weights_sha256)):
                self._export_text_model(emb, store.sample_vectors(20_000))
            VectorIndex.load(self.path, store)  # refresh the FAISS cache now, not on the next query
            store.record_run(started, json.dumps(summary.as_dict()))
            return summary
        finally:
            store.close()

    def merge(self, shard_folders: Iterable[str | os.PathLike[str]], *, remap: Iterable[str] = (),
              wait: bool = False) -> shards.MergeSummary:
        """Fold shards written by `clipsearch embed` into this index (shards.py: model check, dedup, order).

        `remap` entries are "OLD=NEW": shard paths under OLD are indexed under NEW, for a filesystem
        mounted elsewhere here than on the machines that embedded it.
        """
        from clipsearch import shards

        opened = [shards.Shard.open(f) for f in shard_folders]
        if not opened:
            raise UsageError("name at least one shard folder to merge")
        pairs = shards.parse_remap(list(remap))
        shards.check_models(opened)  # before anything is created: a refused merge leaves no trace
        with self._write_lock(wait):
            started = now()
            remove_orphan_temps(self.path)
            store = Store.open(self.path, create=True)
            try:
                summary = shards.merge(store, opened, pairs)
                VectorIndex.load(self.path, store)
                self._export_text_model_if_cached(store)
                store.record_run(started, json.dumps({"merge": summary.as_dict()}))
                return summary
            finally:
                store.close()

    def _export_text_model_if_cached(self, store: Store) -> None:
        """After a merge: the torch-free text encoder, when the model's weights are on this machine.

        Merging needs no model, so one that is not here is not fetched; queries then use the torch path.
        """
        recorded = store.model_identity()
        if recorded is None or not config.text_model_enabled() or text_model.available(
                self.path, recorded.weights_sha256):
            return
        try:
            emb = Embedder(models.parse(recorded.name), self._device, self._precision, download=False)
            check_same_model(recorded, emb.identity)
        except ClipsearchError:
            return
        self._export_text_model(emb, store.sample_vectors(20_000))

    def _export_text_model(self, emb: Embedder, backdrop: np.ndarray) -> None:
        """Give queries a torch-free text encoder (text_model.py); optional, so failures only cost speed."""
        if self._notify is not None:
            self._notify("preparing the text encoder that makes queries fast (once per index)")
        try:
            text_model.export(emb, self.path, backdrop)
        except Exception:  # noqa: BLE001 - an exporter or runtime gap must never fail an indexing run
            text_model.remove(self.path)

    # --- searching ------------------------------------------------------------------------------

    def _require_model(self, store: Store) -> ModelIdentity:
        """The index's model; an index that never embedded a photo has none, and nothing to search."""
        recorded = store.model_identity()
        if recorded is None:
            raise IndexMissingError(f"the index at {self.path} has no photos yet; add some with "
                                    "`clipsearch index FOLDER`")
        return recorded

    def _open_store(self, check_model: bool = True) -> Store:
        store = Store.open(self.path)
        try:
            recorded = self._require_model(store)
            if check_model and self._model_name and models.parse(self._model_name).name != recorded.name:
                raise ModelMismatchError(f"this index was built with {recorded.name}, not "
                                         f"{models.parse(self._model_name).name}; omit --model to use it")
            return store
        except BaseException:
            store.close()
            raise

    def _open_for_search(self, check_model: bool = True) -> tuple[Store, VectorIndex]:
        store = self._open_store(check_model)
        try:
            return store, self._vector_index(store)
        except BaseException:
            store.close()
            raise

    def _vector_index(self, store: Store) -> VectorIndex:
        """The FAISS index of SQLite's current generation; a process that searches again reuses it."""
        cached = self._index
        if cached is not None and cached.still_current(store):
            return cached
        self._index = VectorIndex.load(self.path, store)
        return self._index

    def search(self, text: str | None = None, *, image: str | os.PathLike[str] | None = None,
               top: int = 20, within: Iterable[str | os.PathLike[str]] = (), **options: Any
               ) -> list[search_mod.SearchResult]:
        """Photos nearest to a text and/or an example image, best first (see `query` for options)."""
        return self.query(text, images=() if image is None else (image,), top=top, within=within,
                          **options).results

    def query(self, text: str | None = None, *, images: Iterable[str | os.PathLike[str]] = (),
              add: Iterable[str] = (), sub: Iterable[str] = (), top: int = 20,
              within: Iterable[str | os.PathLike[str]] = (), after: dt.datetime | None = None,
              before: dt.datetime | None = None, formats: Iterable[str] = (), min_width: int = 0,
              min_score: float | None = None, z: float = search_mod.DEFAULT_Z, sort: str = "score",
              similar_to: str | os.PathLike[str] | None = None, tags: Iterable[str] = ()) -> QueryResult:
        """Search with everything the CLI offers: query arithmetic, filters, the relevance cutoff.

        `text` may combine parts: "beach + sunset - people", "2:dog + cat", or image paths.
        `similar_to` names an indexed photo whose stored vector is the query (no re-embedding).
        """
        from clipsearch.scan import IMAGE_EXTENSIONS

        if top < 1:
            raise UsageError("--top must be at least 1")
        if sort not in ("score", "date"):
            raise UsageError("--sort is score or date")
        terms = [] if similar_to is not None else query_mod.parse(
            text, IMAGE_EXTENSIONS, tuple(os.fspath(i) for i in images), tuple(add), tuple(sub))
        kinds = (f.lower().lstrip(".") for f in formats)
        filters = search_mod.Filters(
            within=tuple(os.path.abspath(os.path.expanduser(os.fspath(w))) for w in within),
            after=after, before=before, formats=frozenset(_FORMAT_ALIASES.get(k, k) for k in kinds),
            min_width=min_width)
        store = self._open_store()
        try:
            # The text encoder loads on a thread while FAISS loads here: they overlap on two cores.
            text_vectors = self._text_vectors(store, terms) if similar_to is None else None
            index = self._vector_index(store)
            wanted_tags = [t for t in tags if t.strip()]
            if wanted_tags:
                filters = dataclasses.replace(filters, ids=frozenset(store.ids_with_tags(wanted_tags)))
            exclude: frozenset[int] = frozenset()
            if similar_to is not None:
                path = os.path.abspath(os.path.expanduser(os.fspath(similar_to)))
                image_id = store.id_for_path(path)
                if image_id is None:
                    raise UsageError(f"{scan.display_path(path)} is not in the index; index it first, or use "
                                     "`clipsearch query --image` for a photo from elsewhere")
                vector, exclude = store.vectors_for([image_id])[0], frozenset({image_id})
                terms = [query_mod.Term("indexed", path, 1.0)]
            else:
                assert text_vectors is not None
                vector = self._query_vector(self._require_model(store), terms, text_vectors())
            ranking = search_mod.rank(store, index, vector, top, filters, min_score, z, exclude)
            if sort == "date":
                ranking.results = search_mod.sort_by_date(ranking.results)
            return QueryResult(terms, ranking.results, ranking)
        finally:
            store.close()

    def _text_vectors(self, store: Store, terms: list[query_mod.Term]) -> Callable[[], dict[str, np.ndarray]]:
        """The query's texts as vectors, when called; loading whatever encodes them starts now."""
        recorded = store.model_identity()
        assert recorded is not None
        texts = sorted({t.value for t in terms if t.kind == "text"})
        # Texts embedded before by the index's model come from SQLite: a repeated text query loads
        # no model at all, which is most of a cold query's time.
        known = store.cached_text_vectors(recorded.weights_sha256, texts)
        missing = [t for t in texts if t not in known]
        if not missing:
            return lambda: known
        has_images = any(t.kind == "image" for t in terms)
        # New texts go through the exported text tower when there is one: no torch, no open_clip.
        if not has_images and text_model.available(self.path, recorded.weights_sha256):
            get_encoder: Callable[[], Any] = text_model.load_in_background(self.path / text_model.FOLDER)
        else:
            def get_encoder() -> Any:
                emb = self.embedder()
                check_same_model(recorded, emb.identity)
                return emb

        def encode() -> dict[str, np.ndarray]:
            fresh = dict(zip(missing, get_encoder().embed_texts(missing), strict=True))
            store.cache_text_vectors(recorded.weights_sha256, fresh)
            return {**known, **fresh}

        return encode

    def _query_vector(self, recorded: ModelIdentity, terms: list[query_mod.Term],
                      known: dict[str, np.ndarray]) -> np.ndarray:
        emb = self.embedder() if any(t.kind == "image" for t in terms) else None
        if emb is not None:
            check_same_model(recorded, emb.identity)
        vecs: dict[int, np.ndarray] = {id(t): known[t.value] for t in terms if t.kind == "text"}
        for t in terms:
            if t.kind == "image":
                from clipsearch import images

                assert emb is not None
                try:
                    decoded = images.decode(t.value, emb.preprocess)
                except images.SkipFile as skip:
                    raise UsageError(f"cannot use {scan.display_path(t.value)} as a query image: {skip}") from None
                vecs[id(t)] = emb.embed_images(decoded.pixels[None])[0]
        total = np.sum([t.weight * vecs[id(t)] for t in terms], axis=0)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise UsageError("the query's parts cancel out; nothing is left to search for")
        return (total / norm).astype(np.float32)

    def duplicates(self, paths: Iterable[str | os.PathLike[str]] = (), *,
                   near_cosine: float | None = None, similar: bool = False,
                   similar_cosine: float | None = None, similar_window_s: float | None = None
                   ) -> list[duplicates.Group]:
        """Groups of copies among indexed photos (duplicates.py): exact, near and, if asked, similar."""
        from clipsearch import duplicates

        store, index = self._open_for_search(check_model=False)
        try:
            roots = tuple(os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths)
            return duplicates.find(
                store, index, roots,
                near_cosine=duplicates.NEAR_COSINE if near_cosine is None else near_cosine, similar=similar,
                similar_cosine=duplicates.SIMILAR_COSINE if similar_cosine is None else similar_cosine,
                similar_window_s=duplicates.SIMILAR_WINDOW_S if similar_window_s is None else similar_window_s)
        finally:
            store.close()

    def tag(self, paths: Iterable[str | os.PathLike[str]] = (), *, labels: list[tagging.Label] | None = None,
            template_set: str = "photo", top: int = 5, threshold: float | None = None,
            z: float = search_mod.DEFAULT_Z, write_xmp: bool = False, clear_xmp: bool = False,
            dry_run: bool = False, progress: indexer.Progress | None = None) -> TagSummary:
        """Zero-shot tags for indexed photos under `paths` (indexing them first), stored in SQLite.

        With `write_xmp` the tags also go to XMP sidecars; `clear_xmp` removes clipsearch's tags from
        them instead. `dry_run` computes and reports without writing tags or sidecars.
        """
        from clipsearch import tagging

        given = [os.fspath(p) for p in paths]
        if given:  # indexing only fills the index (never the photos), so a dry run does it too
            self.index(given, progress=progress)
        labels = labels if labels is not None else tagging.default_labels()
        tpl = tagging.templates(template_set)
        names = [lab.name for lab in labels]
        store = Store.open(self.path)
        try:
            recorded = self._require_model(store)
            set_id = tagging.label_set_id(labels, tpl)
            label_mat = store.label_vectors(recorded.weights_sha256, set_id, names)
            if label_mat is None:
                label_mat = tagging.label_vectors(labels, tpl, self._text_encoder(recorded).embed_texts)
                store.save_label_vectors(recorded.weights_sha256, set_id, names, label_mat)
            ids, mat = store.all_vectors()
            cut = tagging.thresholds(mat, label_mat, z, threshold)
            roots = tuple(os.path.abspath(os.path.expanduser(p)) for p in given)
            # Photo rows are read only when a scope or sidecars need them (100k rows cost ~0.8 s).
            rows = store.images(ids.tolist()) if roots or write_xmp or clear_xmp else {}
            in_scope = [n for n, i in enumerate(ids.tolist())
                        if not roots or search_mod.Filters(within=roots).accepts(rows[i])]
            assigned = tagging.assign(mat[in_scope], label_mat, cut, top)
            scope_ids = [int(ids[n]) for n in in_scope]
            tags = [[(names[k], score) for k, score in found] for found in assigned]
            probes = store.probes(recorded.weights_sha256)
            if probes:
                sub = mat[in_scope]
                learned: list[list[tuple[str, float]]] = [[] for _ in scope_ids]
                for name, weights, bias, examples in probes:
                    probe = tagging.Probe(name, weights, bias, examples)
                    for row, p in enumerate(probe.probability(sub)):
                        if p >= 0.5:
                            learned[row].append((name, float(p)))
                for row, extra in enumerate(learned):
                    tags[row] = tags[row] + extra
                if not dry_run:
                    store.replace_tags(scope_ids, "few-shot", "personal", learned)
            if not dry_run:
                store.replace_tags(scope_ids, "zero-shot", set_id,
                                   [[t for t in found if not any(t[0] == p[0] for p in probes)] for found in tags])
            counts: dict[str, int] = {}
            for found in tags:
                for name, _ in found:
                    counts[name] = counts.get(name, 0) + 1
            summary = TagSummary(len(scope_ids), sum(1 for t in tags if t), dict(sorted(
                counts.items(), key=lambda kv: -kv[1])), set_id, len(labels), cut.method)
            if write_xmp or clear_xmp:
                from clipsearch import xmp

                changed, failed = [], []
                for image_id, found in zip(scope_ids, tags, strict=True):
                    try:
                        path, did = xmp.update(rows[image_id].path, [] if clear_xmp else [n for n, _ in found],
                                               dry_run=dry_run)
                    except (ValueError, OSError) as exc:  # a broken or read-only sidecar costs only itself
                        failed.append(f"{rows[image_id].path}: {exc}")
                        continue
                    if did:
                        changed.append(str(path))
                summary.sidecars_changed, summary.sidecars, summary.sidecar_errors = len(changed), changed, failed
            return summary
        finally:
            store.close()

    def learn(self, name: str, examples: Iterable[str | os.PathLike[str]], *,
              negatives: Iterable[str | os.PathLike[str]] = (), use_text: bool = True) -> tagging.Probe:
        """Learn a personal tag from example photos (indexed or not); `tag` applies it from then on.

        Negatives default to up to 2,000 other indexed photos, taken as "mostly not this".
        """
        from clipsearch import tagging

        name = " ".join(name.split())
        if not name:
            raise UsageError("a personal tag needs a name")
        store = Store.open(self.path)
        try:
            recorded = self._require_model(store)
            pos_ids, pos = self._vectors_of(store, recorded, examples)
            negatives = list(negatives)
            if negatives:
                _, neg = self._vectors_of(store, recorded, negatives)
            else:
                ids, mat = store.all_vectors()
                keep = np.flatnonzero(~np.isin(ids, list(pos_ids)))
                pick = np.random.default_rng(0).permutation(keep)[:2000]
                neg = mat[np.sort(pick)]
            prior = self._text_encoder(recorded).embed_texts([f"a photo of {name}"])[0] if use_text else None
            probe = tagging.learn_probe(name, pos, neg, prior)
            store.save_probe(recorded.weights_sha256, name, probe.weights, probe.bias, probe.examples)
            return probe
        finally:
            store.close()

    def forget(self, name: str) -> bool:
        store = Store.open(self.path)
        try:
            return store.forget_probe(name) > 0
        finally:
            store.close()

    def _vectors_of(self, store: Store, recorded: ModelIdentity,
                    paths: Iterable[str | os.PathLike[str]]) -> tuple[set[int], np.ndarray]:
        """Vectors of photos or folders of photos: stored ones when indexed, else embedded now."""
        from clipsearch import images

        files: list[str] = []
        for given in paths:
            path = os.path.abspath(os.path.expanduser(os.fspath(given)))
            if os.path.isdir(path):
                files += [f.path for f in scan.walk([path])]
            elif os.path.isfile(path):
                files.append(path)
            else:
                raise UsageError(f"no such file or folder: {given}")
        ids: set[int] = set()
        vecs: list[np.ndarray] = []
        for path in files:
            image_id = store.id_for_path(path)
            if image_id is not None:
                ids.add(image_id)
                vecs.append(store.vectors_for([image_id])[0])
                continue
            emb = self.embedder()
            check_same_model(recorded, emb.identity)
            try:
                decoded = images.decode(path, emb.preprocess)
            except images.SkipFile as skip:
                raise UsageError(f"cannot use {scan.display_path(path)} as an example: {skip}") from None
            vecs.append(emb.embed_images(decoded.pixels[None])[0])
        if not vecs:
            raise UsageError("no example photos found")
        return ids, np.stack(vecs)

    def tag_counts(self) -> list[tuple[str, str, int]]:
        store = Store.open(self.path)
        try:
            return store.tag_counts()
        finally:
            store.close()

    def all_tags(self) -> list[tuple[str, str, float, str]]:
        """(path, label, score, source) for every tag, for export."""
        store = Store.open(self.path)
        try:
            return [(os_path(p, raw), lab, float(sc), src) for p, raw, lab, sc, src in store.db.execute(
                "SELECT images.path, images.path_raw, label, score, source FROM tags JOIN images "
                "ON images.id = tags.image_id ORDER BY images.path, score DESC")]
        finally:
            store.close()

    def _text_encoder(self, recorded: ModelIdentity) -> Any:
        """The exported text tower when there is one (no torch), else the model itself."""
        if text_model.available(self.path, recorded.weights_sha256):
            return text_model.OnnxTextEncoder(self.path / text_model.FOLDER)
        emb = self.embedder()
        check_same_model(recorded, emb.identity)
        return emb

    def thumbnail_of(self, image_id: int, path: str, mtime_ns: int) -> Path | None:
        """A cached preview of an indexed photo (thumbnails.py)."""
        from clipsearch import thumbnails

        return thumbnails.thumbnail(self.path / "thumbs", image_id, path, mtime_ns)

    def thumbnail(self, result: search_mod.SearchResult) -> Path | None:
        """A cached 256 px JPEG preview of a result (made on first use), or None when unreadable."""
        return self.thumbnail_of(result.id, result.path, int(result.modified.timestamp() * 1e9))

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> Status:
        store = Store.open(self.path)
        try:
            size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
            last = store.last_run()
            faiss_files = list(self.path.glob("vectors.*.faiss"))
            current = self.path / f"vectors.{store.generation()}.faiss"
            cache = "current" if current.exists() else ("stale, rebuilt on next use" if faiss_files else
                                                        "missing, rebuilt on next use")
            model = store.model_identity()
            fast = model is not None and text_model.available(self.path, model.weights_sha256)
            return Status(self.path, model, store.count(), store.skipped_counts(), size,
                          last[0] if last else None, json.loads(last[1]) if last and last[1] else None, cache, fast)
        finally:
            store.close()

    def skipped(self) -> list[tuple[str, str, str]]:
        store = Store.open(self.path)
        try:
            return list(store.iter_skipped())
        finally:
            store.close()

