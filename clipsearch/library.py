"""`Library`: the public facade that wires scan, decode, embed, store and search together.

Searching lives here; indexing and merging in library_indexing.py, tagging in library_tagging.py
(Library inherits both).

    from clipsearch import Library
    lib = Library()                       # the default index, its recorded model
    lib.index(["~/Photos"])
    for hit in lib.search("my cute dog", top=5):
        print(hit.score, hit.path)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clipsearch import duplicates

from clipsearch import config, models, scan, text_model
from clipsearch import query as query_mod
from clipsearch import search as search_mod
from clipsearch.embedder import Embedder, ModelIdentity
from clipsearch.errors import (
    IndexMissingError,
    ModelMismatchError,
    UsageError,
)
from clipsearch.library_indexing import Indexing
from clipsearch.library_tagging import Tagging
from clipsearch.store import Store, check_same_model
from clipsearch.vectors import VectorIndex

_FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "heic": "heif", "jp2": "jpeg2000",
                   "ppm": "ppm", "pgm": "ppm", "pbm": "ppm"}


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


class Library(Indexing, Tagging):
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
        # The exported text tower once loaded, with the weights it belongs to: a process that asks
        # many new texts (a server, a notebook) loads it once instead of once a query (60-150 ms).
        self._text_encoder_loaded: tuple[str, text_model.OnnxTextEncoder] | None = None

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
        kept = self._text_encoder_loaded
        if not has_images and kept is not None and kept[0] == recorded.weights_sha256 and text_model.available(
                self.path, recorded.weights_sha256):
            def get_encoder() -> Any:
                return kept[1]
        elif not has_images and text_model.available(self.path, recorded.weights_sha256):
            loading = text_model.load_in_background(self.path / text_model.FOLDER)

            def get_encoder() -> Any:
                encoder = loading()
                self._text_encoder_loaded = (recorded.weights_sha256, encoder)
                return encoder
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

