"""`Library`: the public facade over one index folder and its model.

Each method is thin: it opens the store, takes the write lock when it writes, picks the encoder,
and hands the work to the module that owns it (ingest/, search/, tags/). Nothing here prints.
README.md shows it in use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import config, paths
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.errors import ClipsearchError, IndexMissingError, ModelMismatchError, UsageError
from clipsearch.formats import IMAGE_EXTENSIONS
from clipsearch.index.faults import guarded
from clipsearch.index.lock import write_lock
from clipsearch.index.records import now
from clipsearch.index.status import Status, status
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex, remove_orphan_temps
from clipsearch.model import names, text_tower
from clipsearch.model.identity import ModelIdentity, check_same_model
from clipsearch.search import query as query_mod
from clipsearch.search import ranking
from clipsearch.search.relevance import DEFAULT_Z

if TYPE_CHECKING:
    from clipsearch.ingest import merge as merge_mod
    from clipsearch.ingest import pipeline, shards
    from clipsearch.ingest.ray_executor import RayOptions
    from clipsearch.model.embedder import Embedder
    from clipsearch.search import duplicates
    from clipsearch.tags import probes, workflow, zero_shot

__all__ = ["Library", "Status"]

TextEncoder = Any  # an Embedder or a text_tower.OnnxTextEncoder: both have embed_texts(list[str])


@guarded  # read-only, damaged or vanishing index files end as ClipsearchErrors (index/faults.py)
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

    # --- the model ------------------------------------------------------------------------------

    def model_spec(self) -> names.ModelSpec:
        """The model this library uses: the one asked for, else the index's, else the default."""
        if self._model_name:
            return names.parse(self._model_name)
        try:
            with Store.open(self.path) as store:
                recorded = store.model_identity()
        except ClipsearchError:  # no index (or no readable one): nothing is recorded
            recorded = None
        return names.parse(recorded.name if recorded else config.DEFAULT_MODEL)

    def embedder(self) -> Embedder:
        if self._embedder is None:
            from clipsearch.model.embedder import Embedder

            self._embedder = Embedder(self.model_spec(), self._device, self._precision, self._download,
                                      self._notify)
        return self._embedder

    def _checked_embedder(self, recorded: ModelIdentity) -> Embedder:
        emb = self.embedder()
        check_same_model(recorded, emb.identity)
        return emb

    def _check_asked_model(self, recorded: ModelIdentity | None, remedy: str) -> None:
        """A --model that names another model than the index's is refused before anything loads."""
        if recorded is not None and self._model_name and names.parse(self._model_name).name != recorded.name:
            raise ModelMismatchError(f"this index was built with {recorded.name}, not "
                                     f"{names.parse(self._model_name).name}; {remedy}")

    def _text_encoder(self, recorded: ModelIdentity, background: bool = False) -> Callable[[], TextEncoder]:
        """Whatever embeds texts for this index, when called: the exported text tower when there is
        one (no torch; started on a thread now when `background`), else the model itself."""
        if text_tower.available(self.path, recorded.weights_sha256):
            folder = self.path / text_tower.FOLDER
            return text_tower.load_in_background(folder) if background else lambda: text_tower.OnnxTextEncoder(folder)
        return lambda: self._checked_embedder(recorded)

    def _embed_photo(self, recorded: ModelIdentity, path: str, purpose: str) -> np.ndarray:
        """One photo from outside the index, decoded and embedded as indexing would."""
        from clipsearch.ingest import images

        emb = self._checked_embedder(recorded)
        try:
            decoded = images.decode(path, emb.preprocess)
        except images.SkipFile as skip:
            raise UsageError(f"cannot use {paths.display(path)} as {purpose}: {skip}") from None
        return emb.embed_images(decoded.pixels[None])[0]

    # --- writing the index ----------------------------------------------------------------------

    def index(self, folders: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str] = (),
              follow_symlinks: bool = False, include_hidden: bool = False, rebuild: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, wait: bool = False,
              progress: pipeline.Progress | None = None, ray: RayOptions | None = None) -> pipeline.IndexSummary:
        """Add new and changed photos under `folders`, drop deleted ones, keep moved ones' vectors.

        With `ray`, decoding and embedding run on a Ray cluster (ray_executor.py); the scan, the plan
        and every commit stay here, so the index ends up the same either way.
        """
        from clipsearch.ingest import pipeline

        roots = paths.existing(folders, "name at least one folder or photo to index")
        executor = None
        if ray is not None:  # before anything is created: a missing extra leaves no trace
            from clipsearch.ingest.ray_executor import RayExecutor

            executor = RayExecutor(ray, self._device, self._precision)
        with write_lock(self.path, wait), Store.open(self.path, create=True) as store:
            started = now()
            remove_orphan_temps(self.path)
            self._check_asked_model(store.model_identity() if not rebuild else None,
                                    "pass --rebuild to re-embed every photo with the new model, or use another "
                                    "--index")
            if rebuild:
                store.reset()
                text_tower.remove(self.path)
            def bound_embedder() -> Embedder:
                emb = self.embedder()
                store.bind_model(emb.identity)
                return emb

            walk = pipeline.ScanOptions(tuple(exclude), follow_symlinks, include_hidden)
            summary = pipeline.index_roots(store, list(roots), walk, bound_embedder, max_pixels, progress, executor)
            self._finish_write(store, started, summary.as_dict(), load_model=True)  # a lost text model too
            return summary

    def merge(self, shard_folders: Iterable[str | os.PathLike[str]], *, remap: Iterable[str] = (),
              wait: bool = False) -> merge_mod.MergeSummary:
        """Fold shards written by `clipsearch embed` into this index (merge.py: model check, dedup, order).

        `remap` entries are "OLD=NEW": shard paths under OLD are indexed under NEW, for a filesystem
        mounted elsewhere here than on the machines that embedded it.
        """
        from clipsearch.ingest import merge

        opened = [merge.Shard.open(f) for f in shard_folders]
        if not opened:
            raise UsageError("name at least one shard folder to merge")
        pairs = merge.parse_remap(list(remap))
        merge.check_models(opened)  # before anything is created: a refused merge leaves no trace
        with write_lock(self.path, wait), Store.open(self.path, create=True) as store:
            started = now()
            remove_orphan_temps(self.path)
            summary = merge.merge(store, opened, pairs)
            # Merging needs no model: the text tower is exported only from weights already here.
            self._finish_write(store, started, {"merge": summary.as_dict()}, load_model=True)
            return summary

    def embed_shard(self, folders: Iterable[str | os.PathLike[str]], shard: tuple[int, int],
                    out: str | os.PathLike[str], *, exclude: Iterable[str] = (), follow_symlinks: bool = False,
                    include_hidden: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                    progress: pipeline.Progress | None = None) -> shards.ShardSummary:
        """Embed one shard of `folders` into the shard folder `out` (shards.py); this index is not used.

        The model is the one asked for, else $CLIPSEARCH_MODEL, else the default: never a local
        index's, which the machines that merge may not have.
        """
        from clipsearch.ingest import shards
        from clipsearch.model.embedder import Embedder

        def load() -> Embedder:
            spec = names.parse(self._model_name or config.DEFAULT_MODEL)
            return Embedder(spec, self._device, self._precision, self._download, self._notify)

        return shards.embed([os.fspath(f) for f in folders], shard, out, load, exclude=tuple(exclude),
                            follow_symlinks=follow_symlinks, include_hidden=include_hidden, max_pixels=max_pixels,
                            progress=progress)

    def _finish_write(self, store: Store, started: str, summary: dict[str, object], load_model: bool) -> None:
        """After a write: the text tower for torch-free queries (from the model this run loaded, or with
        `load_model` from the index's weights if they are here already, never a download), a current
        FAISS file, the run's record."""
        if store.model_identity() is None and self._embedder is not None:
            store.bind_model(self._embedder.identity)
        recorded = store.model_identity()
        if (recorded is not None and config.text_model_enabled()
                and not text_tower.available(self.path, recorded.weights_sha256)):
            from clipsearch.model import text_export

            text_export.ensure(self.path, recorded, self._embedder, load_model, self._device, self._precision,
                               lambda: store.sample_vectors(20_000), self._notify)
        VectorIndex.load(self.path, store, notify=self._notify)  # refresh the FAISS cache now, not at a query
        store.record_run(started, json.dumps(summary))

    # --- searching ------------------------------------------------------------------------------

    def _open(self, check_model: bool = True) -> Store:
        """The index's store, which must have photos (and, with `check_model`, the model asked for)."""
        store = Store.open(self.path)
        try:
            recorded = _require_model(store, self.path)
            if check_model:
                self._check_asked_model(recorded, "omit --model to use it")
            return store
        except BaseException:
            store.close()
            raise

    def _vector_index(self, store: Store) -> VectorIndex:
        """The FAISS index of SQLite's current generation; a process that searches again reuses it."""
        cached = self._index
        if cached is not None and cached.still_current(store):
            return cached
        self._index = VectorIndex.load(self.path, store, notify=self._notify)
        return self._index

    def search(self, text: str | None = None, *, image: str | os.PathLike[str] | None = None,
               top: int = 20, within: Iterable[str | os.PathLike[str]] = (), **options: Any
               ) -> list[ranking.SearchResult]:
        """Photos nearest to a text and/or an example image, best first (see `query` for options)."""
        return self.query(text, images=() if image is None else (image,), top=top, within=within,
                          **options).results

    def query(self, text: str | None = None, *, images: Iterable[str | os.PathLike[str]] = (),
              add: Iterable[str] = (), sub: Iterable[str] = (), top: int = 20,
              within: Iterable[str | os.PathLike[str]] = (), after: dt.datetime | None = None,
              before: dt.datetime | None = None, formats: Iterable[str] = (), min_width: int = 0,
              min_score: float | None = None, z: float = DEFAULT_Z, sort: str = "score",
              similar_to: str | os.PathLike[str] | None = None, tags: Iterable[str] = ()) -> ranking.QueryResult:
        """Search with everything the CLI offers: query arithmetic, filters, the relevance cutoff.

        `text` may combine parts: "beach + sunset - people", "2:dog + cat", or image paths.
        `similar_to` names an indexed photo whose stored vector is the query (no re-embedding).
        """
        if top < 1:
            raise UsageError("--top must be at least 1")
        if sort not in ("score", "date"):
            raise UsageError("--sort is score or date")
        terms = [] if similar_to is not None else query_mod.parse(
            text, IMAGE_EXTENSIONS, tuple(os.fspath(i) for i in images), tuple(add), tuple(sub))
        filters = ranking.Filters.build(within, after, before, formats, min_width)
        with self._open() as store:
            recorded = _require_model(store, self.path)
            if similar_to is not None:
                terms, vector, exclude = self._stored_vector(store, similar_to)
                index = self._vector_index(store)
            else:
                # The text encoder loads on a thread while FAISS loads here: they overlap on two cores.
                text_vectors = self._text_vectors(store, recorded, terms)
                index = self._vector_index(store)
                known = text_vectors()
                vector = query_mod.combine(terms, lambda t: known[t.value] if t.kind == "text" else
                                           self._embed_photo(recorded, t.value, "a query image"))
                exclude = frozenset()
            wanted_tags = [t for t in tags if t.strip()]
            if wanted_tags:
                filters = dataclasses.replace(filters, ids=frozenset(store.tags.ids_with_tags(wanted_tags)))
            found = ranking.rank(store, index, vector, top, filters, min_score, z, exclude)
            if sort == "date":
                found.results = ranking.sort_by_date(found.results)
            return ranking.QueryResult(terms, found.results, found)

    def _stored_vector(self, store: Store, photo: str | os.PathLike[str]
                       ) -> tuple[list[query_mod.Term], np.ndarray, frozenset[int]]:
        """An indexed photo as the query: its stored vector, and itself left out of the results."""
        path = paths.resolve(photo)
        image_id = store.id_for_path(path)
        if image_id is None:
            raise UsageError(f"{paths.display(path)} is not in the index; index it first, or use "
                             "`clipsearch query --image` for a photo from elsewhere")
        return [query_mod.Term("indexed", path, 1.0)], store.vectors_of_ids([image_id])[0], frozenset({image_id})

    def _text_vectors(self, store: Store, recorded: ModelIdentity,
                      terms: list[query_mod.Term]) -> Callable[[], dict[str, np.ndarray]]:
        """The query's texts as vectors, when called; loading whatever encodes them starts now."""
        if any(t.kind == "image" for t in terms):  # the model loads anyway: it embeds the texts too
            return query_mod.text_vectors(store, recorded.weights_sha256, terms,
                                          lambda: lambda: self._checked_embedder(recorded))
        return query_mod.text_vectors(store, recorded.weights_sha256, terms,
                                      lambda: self._text_encoder(recorded, background=True))

    def duplicates(self, folders: Iterable[str | os.PathLike[str]] = (), *,
                   near_cosine: float | None = None, similar: bool = False,
                   similar_cosine: float | None = None, similar_window_s: float | None = None
                   ) -> list[duplicates.Group]:
        """Groups of copies among indexed photos (duplicates.py): exact, near and, if asked, similar."""
        from clipsearch.search import duplicates

        with self._open(check_model=False) as store:
            return duplicates.find(
                store, self._vector_index(store), paths.resolve_all(folders),
                near_cosine=duplicates.NEAR_COSINE if near_cosine is None else near_cosine, similar=similar,
                similar_cosine=duplicates.SIMILAR_COSINE if similar_cosine is None else similar_cosine,
                similar_window_s=duplicates.SIMILAR_WINDOW_S if similar_window_s is None else similar_window_s)

    def thumbnail_of(self, image_id: int, path: str, mtime_ns: int) -> Path | None:
        """A cached 256 px JPEG preview of an indexed photo (made on first use), or None when unreadable."""
        from clipsearch.ingest import thumbnails

        return thumbnails.thumbnail(self.path / "thumbs", image_id, path, mtime_ns)

    def thumbnail(self, result: ranking.SearchResult) -> Path | None:
        return self.thumbnail_of(result.id, result.path, int(result.modified.timestamp() * 1e9))

    # --- tags -----------------------------------------------------------------------------------

    def tag(self, folders: Iterable[str | os.PathLike[str]] = (), *, labels: list[zero_shot.Label] | None = None,
            template_set: str = "photo", top: int = 5, threshold: float | None = None, z: float = DEFAULT_Z,
            write_xmp: bool = False, clear_xmp: bool = False, dry_run: bool = False,
            progress: pipeline.Progress | None = None) -> workflow.TagSummary:
        """Zero-shot tags for indexed photos under `folders` (indexing them first), stored in SQLite.

        With `write_xmp` the tags also go to XMP sidecars; `clear_xmp` removes clipsearch's tags from
        them instead. `dry_run` computes and reports without writing tags or sidecars.
        """
        from clipsearch.tags import workflow, zero_shot

        given = [os.fspath(p) for p in folders]
        if given:  # indexing only fills the index (never the photos), so a dry run does it too
            self.index(given, progress=progress)
        request = workflow.TagRequest(labels if labels is not None else zero_shot.default_labels(),
                                      zero_shot.templates(template_set), top, threshold, z)
        with Store.open(self.path) as store:
            recorded = _require_model(store, self.path)
            return workflow.tag(store, recorded, request, self._text_encoder(recorded), paths.resolve_all(given),
                                write_xmp=write_xmp, clear_xmp=clear_xmp, dry_run=dry_run)

    def learn(self, name: str, examples: Iterable[str | os.PathLike[str]], *,
              negatives: Iterable[str | os.PathLike[str]] = (), use_text: bool = True) -> probes.Probe:
        """Learn a personal tag from example photos (indexed or not); `tag` applies it from then on.

        Negatives default to up to 2,000 other indexed photos, taken as "mostly not this".
        """
        from clipsearch.tags import workflow

        with Store.open(self.path) as store:
            recorded = _require_model(store, self.path)

            def embed(path: str) -> np.ndarray:
                return self._embed_photo(recorded, path, "an example")

            return workflow.learn(store, recorded, name, examples, negatives, embed,
                                  self._text_encoder(recorded) if use_text else None)

    def forget(self, name: str) -> bool:
        """Forget a personal tag and the tags it gave."""
        with Store.open(self.path) as store:
            return store.tags.forget_probe(name) > 0

    def tag_counts(self) -> list[tuple[str, str, int]]:
        with Store.open(self.path) as store:
            return store.tags.tag_counts()

    def all_tags(self) -> list[tuple[str, str, float, str]]:
        """(path, label, score, source) for every tag, for export."""
        with Store.open(self.path) as store:
            return store.tags.all_tags()

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> Status:
        with Store.open(self.path) as store:
            return status(self.path, store)

    def skipped(self) -> list[tuple[str, str, str]]:
        with Store.open(self.path) as store:
            return list(store.iter_skipped())


def _require_model(store: Store, folder: Path) -> ModelIdentity:
    """The index's model; an index that never embedded a photo has none, and nothing to search."""
    recorded = store.model_identity()
    if recorded is None:
        raise IndexMissingError(f"the index at {folder} has no photos yet; add some with "
                                "`clipsearch index FOLDER`")
    return recorded
