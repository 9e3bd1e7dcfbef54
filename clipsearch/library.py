"""`Library`: the public facade over one index folder and its model (README, "From Python").

Each method is thin: it opens the store, takes the write lock when it writes, picks the encoder,
and hands the work to the module that owns it (ingest/, search/, tags/). Nothing here prints.
README.md ("From Python") shows it in use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import config, paths
from clipsearch.config import DEFAULT_MAX_PIXELS
from clipsearch.encoders import Encoders
from clipsearch.errors import IndexMissingError, UsageError
from clipsearch.formats import IMAGE_EXTENSIONS
from clipsearch.index import roots as index_roots
from clipsearch.index import video_tables
from clipsearch.index.faults import guarded
from clipsearch.index.lock import write_lock
from clipsearch.index.readers import KeptStores
from clipsearch.index.records import now
from clipsearch.index.status import Status, status
from clipsearch.index.store import Store
from clipsearch.index.vectors import VectorIndex, remove_orphan_temps
from clipsearch.model import languages, names, text_tower
from clipsearch.model.identity import ModelIdentity
from clipsearch.search import query as query_mod
from clipsearch.search import ranking, relevance
from clipsearch.search.relevance import DEFAULT_Z

if TYPE_CHECKING:
    from clipsearch.ingest import merge as merge_mod
    from clipsearch.ingest import pipeline, shards
    from clipsearch.ingest.ray_executor import RayOptions
    from clipsearch.model.embedder import Embedder
    from clipsearch.search import duplicates
    from clipsearch.tags import probes, workflow, zero_shot

__all__ = ["Library", "Status"]


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
        self._model = Encoders(self.path, config.model_name(model), config.device_name(device), precision, download,
                               notify)
        self._notify = notify
        self._index: VectorIndex | None = None  # kept between searches while its generation is current
        self._alternatives: ranking.Alternatives | None = None  # likewise, for this model's text queries
        self._stores = KeptStores(self.path)

    def model_spec(self) -> names.ModelSpec:
        """The model this library uses: the one asked for, else the index's, else the default."""
        return self._model.spec()

    def embedder(self) -> Embedder:
        return self._model.embedder()

    # --- writing the index ----------------------------------------------------------------------

    def index(self, folders: Iterable[str | os.PathLike[str]], *, exclude: Iterable[str] = (),
              follow_symlinks: bool = False, include_hidden: bool = False, rebuild: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, wait: bool = False,
              progress: pipeline.Progress | None = None, ray: RayOptions | None = None) -> pipeline.IndexSummary:
        """Add new and changed photos under `folders` (none: every root it knows), drop deleted ones,
        keep moved ones' vectors. With `ray`, decoding and embedding run on Ray (ray_executor.py)."""
        from clipsearch.ingest import pipeline

        given = [os.fspath(f) for f in folders]
        roots, vanished = paths.existing(given, "name a folder or photo to index") if given else (), tuple[str, ...]()
        if not given:
            Store.open(self.path).close()  # no index yet: that error, before the lock makes a folder
        executor = None
        if ray is not None:  # before anything is created: a missing extra leaves no trace
            from clipsearch.ingest.ray_executor import RayExecutor

            executor = RayExecutor(ray, self._model.device, self._model.precision)
        with write_lock(self.path, wait), Store.open(self.path, create=bool(given)) as store:
            started = now()
            if not given:  # the vanished roots are forgotten now, in their own transaction
                roots, vanished = index_roots.rescan(store)
            remove_orphan_temps(self.path)
            self._model.check_asked(store.model_identity() if not rebuild else None,
                                    "pass --rebuild to re-embed every photo with the new model, or use another "
                                    "--index")
            if rebuild:
                store.reset()
                text_tower.remove(self.path)
            def bound_embedder() -> Embedder:
                emb = self._model.embedder()
                store.bind_model(emb.identity)
                if store.meta("logit_scale") is None:  # text queries' relevance decision reads it
                    store.set_meta("logit_scale", repr(emb.logit_scale))
                if emb.logit_bias is not None and store.meta("logit_bias") is None:  # a SigLIP model's
                    store.set_meta("logit_bias", repr(emb.logit_bias))
                return emb

            walk = pipeline.ScanOptions(tuple(exclude), follow_symlinks, include_hidden)
            summary = pipeline.index_roots(store, list(roots), walk, bound_embedder, max_pixels, progress, executor)
            index_roots.remember(store, roots)
            summary.vanished_roots = list(vanished)
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
            spec = names.parse(self._model.name or config.DEFAULT_MODEL)
            return Embedder(spec, self._model.device, self._model.precision, self._model.download, self._notify)

        return shards.embed([os.fspath(f) for f in folders], shard, out, load, exclude=tuple(exclude),
                            follow_symlinks=follow_symlinks, include_hidden=include_hidden, max_pixels=max_pixels,
                            progress=progress)

    def _finish_write(self, store: Store, started: str, summary: dict[str, object], load_model: bool) -> None:
        """After a write: a current FAISS file, the run's record, then the towers for torch-free
        queries: linked from the cache or exported in the background (background_export.py), from
        the index's weights if they are on this machine already (never a download)."""
        if store.model_identity() is None and self._model.loaded is not None:
            store.bind_model(self._model.loaded.identity)
        recorded = store.model_identity()
        VectorIndex.load(self.path, store, notify=self._notify)  # refresh the FAISS cache now, not at a query
        store.record_run(started, json.dumps(summary))
        if recorded is not None:
            from clipsearch.model import background_export

            m = self._model
            background_export.after_write(self.path, recorded, m.loaded, load_model, m.device, m.precision,
                                          self._notify)

    # --- searching ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self, check_model: bool = True) -> Iterator[Store]:
        """The index's store, which must have photos (and, with `check_model`, the model asked for).

        A Library that reads again reuses its thread's open store (index/readers.py)."""
        with self._stores.reading() as store:
            recorded = _require_model(store, self.path)
            if check_model:
                self._model.check_asked(recorded, "omit --model to use it")
            yield store

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
              near: str | None = None, camera: str | None = None, min_score: float | None = None,
              z: float = DEFAULT_Z, sort: str = "score",
              similar_to: str | os.PathLike[str] | None = None, tags: Iterable[str] = (),
              all_moments: bool = False) -> ranking.QueryResult:
        """Search with everything the CLI offers: query arithmetic, filters, the relevance cutoff.

        `text` may combine parts: "beach + sunset - people", "2:dog + cat", or image paths.
        `similar_to` names an indexed photo whose stored vector is the query (no re-embedding).
        A video appears once, at its best moment; `all_moments` lists each matching moment.
        """
        if top < 1:
            raise UsageError("--top must be at least 1")
        if sort not in ("score", "date"):
            raise UsageError("--sort is score or date")
        images, add, sub, wanted_tags = list(images), list(add), list(sub), [t for t in tags if t.strip()]
        filters = ranking.Filters.build(within, after, before, formats, min_width, near, camera)
        if similar_to is None and not (text or "").strip() and not (images or add or sub) and wanted_tags:
            with self._open(check_model=False) as store:  # `query --tag NAME` alone: the tagged photos
                return ranking.tagged(store, wanted_tags, top, filters, sort)
        terms = [] if similar_to is not None else query_mod.parse(
            text, IMAGE_EXTENSIONS, tuple(os.fspath(i) for i in images), tuple(add), tuple(sub))
        with self._open() as store:
            recorded = _require_model(store, self.path)
            alternatives: np.ndarray | None = None
            if similar_to is not None:
                terms, vector, exclude = self._stored_vector(store, similar_to)
                index = self._vector_index(store)
            else:
                alts = ranking.Alternatives.for_query(store, recorded.weights_sha256, terms, _vocabulary,
                                                      self._alternatives)
                # Indexed photos among the query's images are their stored vectors: no model for them.
                photos = self._model.indexed_photos(store, [t.value for t in terms if t.kind == "image"])
                # The text encoder loads on a thread while FAISS loads here: they overlap on two cores.
                text_vectors = self._text_vectors(store, recorded, terms, alts.to_embed, photos)
                index = self._vector_index(store)
                known = {**text_vectors(), **photos}
                vector = query_mod.combine(terms, lambda t: known[t.value] if t.value in known else
                                           self._model.embed_photo(recorded, t.value, "a query image"))
                alternatives, exclude = alts.vectors(store, known), frozenset()
                if alts.used:
                    self._alternatives = alts
            if wanted_tags:
                filters = dataclasses.replace(filters, ids=frozenset(store.tags.ids_with_tags(wanted_tags)))
            found = ranking.rank(store, index, vector, top, filters, min_score, z, exclude, alternatives,
                                 relevance.logit_scale_of(store.meta("logit_scale")),
                                 all_moments=all_moments,
                                 logit_bias=relevance.logit_bias_of(store.meta("logit_bias")))
            if sort == "date":
                found.results = ranking.sort_by_date(found.results)
            note = languages.note_for([t.value for t in terms if t.kind == "text"], recorded.name)
            return ranking.QueryResult(terms, found.results, found, [note] if note else [])

    def _stored_vector(self, store: Store, photo: str | os.PathLike[str]
                       ) -> tuple[list[query_mod.Term], np.ndarray, frozenset[int]]:
        """An indexed photo as the query: its stored vector, and itself left out of the results."""
        path = paths.resolve(photo)
        image_id = store.id_for_path(path)
        if image_id is None:  # VIDEO#t=SECONDS: the video's kept frame nearest that moment
            image_id = video_tables.frame_near(store.db, path)
        if image_id is None:
            raise UsageError(f"{paths.display(path)} is not in the index; index it first, or use "
                             "`clipsearch query --image` for a photo from elsewhere")
        return [query_mod.Term("indexed", path, 1.0)], store.vectors_of_ids([image_id])[0], frozenset({image_id})

    def _text_vectors(self, store: Store, recorded: ModelIdentity, terms: list[query_mod.Term],
                      extra: list[str], photos: dict[str, np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """The query's texts (and `extra` texts) as vectors, when called; loading their encoder starts now."""
        needs_model = any(t.kind == "image" and t.value not in photos for t in terms)
        if needs_model and not self._model.image_tower_ready(recorded):
            # The model loads anyway (a new photo and no exported image tower): it embeds the texts too.
            return query_mod.text_vectors(store, recorded.weights_sha256, terms,
                                          lambda: lambda: self._model.checked(recorded), extra)
        return query_mod.text_vectors(store, recorded.weights_sha256, terms,
                                      lambda: self._model.text(recorded, background=True), extra)

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
        """A cached 256 px JPEG preview of an indexed photo (made on first use), or None when unreadable.
        A video's row (or a frame's, `VIDEO#t=SECONDS`) shows its frame at that moment."""
        from clipsearch.ingest import thumbnails

        return thumbnails.of_row(self.path / "thumbs", image_id, path, mtime_ns)

    def thumbnail(self, result: ranking.SearchResult) -> Path | None:
        """A result's preview; a video's is its frame at the result's moment (decoded again)."""
        from clipsearch.ingest import thumbnails

        return thumbnails.of_row(self.path / "thumbs", result.id, result.path, int(result.modified.timestamp() * 1e9),
                                 result.time)

    # --- tags -----------------------------------------------------------------------------------

    def tag(self, folders: Iterable[str | os.PathLike[str]] = (), *, labels: list[zero_shot.Label] | None = None,
            template_set: str = "photo", top: int = 5, threshold: float | None = None, z: float = DEFAULT_Z,
            write_xmp: bool = False, clear_xmp: bool = False, dry_run: bool = False, wait: bool = False,
            progress: pipeline.Progress | None = None) -> workflow.TagSummary:
        """Zero-shot tags for photos under `folders` (indexed first) in SQLite, and in sidecars with `write_xmp`."""
        from clipsearch.tags import workflow, zero_shot

        given = [os.fspath(p) for p in folders]
        if given and not clear_xmp:  # indexing only fills the index (never the photos): dry runs do it too
            self.index(given, wait=wait, progress=progress)
        request = workflow.TagRequest(labels if labels is not None else zero_shot.default_labels(),
                                      zero_shot.templates(template_set), top, threshold, z)
        with self._open() as store:  # a --model other than the index's is refused, as for queries
            recorded = _require_model(store, self.path)
            return workflow.tag(store, recorded, request, self._model.text(recorded), paths.resolve_all(given),
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
                return self._model.photo_vector(store, recorded, path, "an example")

            return workflow.learn(store, recorded, name, examples, negatives, embed,
                                  self._model.text(recorded) if use_text else None)

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

    def forget_paths(self, targets: Iterable[str | os.PathLike[str]], wait: bool = False) -> index_roots.Forgotten:
        """Remove photos at or under `targets` from the index (the files stay); the FAISS file follows."""
        with write_lock(self.path, wait), Store.open(self.path) as store:
            return index_roots.forget(store, paths.resolve_all(targets))

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


def _vocabulary() -> list[str]:
    """The built-in tag vocabulary's labels: the alternatives text queries are weighed against."""
    from clipsearch.tags import zero_shot

    return [lab.name for lab in zero_shot.default_labels()]
