"""Which model a library uses, and the encoders it lends out: each loaded only when first needed.

`Library` holds one. A text query asks it for a text encoder (the exported ONNX tower when the
index has one: no torch), image queries for the embedder, checked against the model the index
recorded, and an index run for whatever embeds its photos: the model, or for a few photos the
exported image tower (model/onnx_indexing.py: no torch in that process), or where none is exported
yet, the first index too, the ViT tower built from the weights without torch (model/vit_graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch import config, paths
from clipsearch.errors import ClipsearchError, ModelMismatchError, UsageError
from clipsearch.index.store import DB_NAME, Store
from clipsearch.model import background_export, image_tower, names, onnx_indexing, text_tower
from clipsearch.model.identity import ModelIdentity, check_same_model
from clipsearch.model.onnx_indexing import ImageEmbedder

if TYPE_CHECKING:
    from clipsearch.model.embedder import Embedder
    from clipsearch.model.vit_config import VitTower
    from clipsearch.model.vit_torch import TorchVitEmbedder

TextEncoder = Any  # an Embedder or a text_tower.OnnxTextEncoder: both have embed_texts(list[str])


class Encoders:
    """The model asked for (by name, device, precision) for one index folder."""

    def __init__(self, index_dir: Path, name: str | None, device: str | None, precision: str | None,
                 download: bool, notify: Callable[[str], None] | None) -> None:
        self.index_dir = index_dir
        self.name = name
        self.device = device
        self.precision = precision
        self.download = download
        self.notify = notify
        self.loaded: Embedder | None = None
        # The exported text tower once loaded, with the weights it belongs to: a process that asks
        # many new texts (a server, a notebook) loads it once instead of once a query (60-150 ms).
        self._text_tower: tuple[str, text_tower.OnnxTextEncoder] | None = None
        self._image_tower: tuple[str, image_tower.ImageEncoder] | None = None
        self._torch_kept: TorchVitEmbedder | None = None  # _torch_tower's, until the Embedder loads

    def spec(self) -> names.ModelSpec:
        """The model asked for, else the index's, else the default."""
        if self.name:
            return names.parse(self.name)
        try:
            with Store.open(self.index_dir) as store:
                recorded = store.model_identity()
        except ClipsearchError:  # no index (or no readable one): nothing is recorded
            recorded = None
        return names.parse(recorded.name if recorded else config.DEFAULT_MODEL)

    def embedder(self) -> Embedder:
        if self.loaded is None:
            from clipsearch.model.embedder import Embedder

            self.loaded = Embedder(self.spec(), self.device, self.precision, self.download, self.notify)
            self._torch_kept = None  # the Embedder embeds from now on: one copy of the image tower
        return self.loaded

    def checked(self, recorded: ModelIdentity) -> Embedder:
        """The embedder, refused when its weights are not the ones the index was built with."""
        emb = self.embedder()
        check_same_model(recorded, emb.identity)
        return emb

    def check_asked(self, recorded: ModelIdentity | None, remedy: str) -> None:
        """A --model that names another model than the index's is refused before anything loads."""
        if recorded is not None and self.name and names.parse(self.name).name != recorded.name:
            raise ModelMismatchError(f"this index was built with {recorded.name}, not "
                                     f"{names.parse(self.name).name}; {remedy}")

    def for_indexing(self, store: Store, local: bool) -> Callable[[int], ImageEmbedder]:
        """What embeds an index run's photos once the plan knows how many (pipeline.GetEmbedder),
        bound to the index: the model's identity recorded (or refused), and its logit scale."""
        def bound(images: int) -> ImageEmbedder:
            emb = ((self._tower_for_indexing(store, images) or self._torch_tower(store.model_identity()) if local
                    else None) or self.embedder())
            store.bind_model(emb.identity)
            if store.meta("logit_scale") is None:  # text queries' relevance decision reads it
                store.set_meta("logit_scale", repr(emb.logit_scale))
            if emb.logit_bias is not None and store.meta("logit_bias") is None:  # a SigLIP model's
                store.set_meta("logit_bias", repr(emb.logit_bias))
            return emb

        return bound

    def _tower_for_indexing(self, store: Store, images: int) -> ImageEmbedder | None:
        """The image tower in ONNX where it beats loading torch for `images` pictures, else None.

        Only on the CPU, in the model's own precision (onnx_indexing.tower_runtimes), and not when this
        process has torch's model loaded already (a server): then torch costs nothing more. The
        index's verified export when it has one for its recorded model; else, the first index of a
        model included, the graph vit_graph.py builds from the weights without torch, where the
        model qualifies (_built_tower). A tower that will not load leaves the run to torch: speed,
        not correctness.
        """
        from clipsearch.model import image_export

        if self.loaded is not None or not image_export.enabled():
            return None
        runtimes = onnx_indexing.tower_runtimes(images, self.device, self.precision)  # (): torch pays
        if not runtimes:
            return None
        recorded, scale = store.model_identity(), store.meta("logit_scale")
        if recorded is not None and self.name and names.parse(self.name).name != recorded.name:
            return None  # refused before this (check_asked); never embedded with another model's tower
        try:
            if recorded is not None and scale is not None and image_tower.available(self.index_dir,
                                                                                    recorded.weights_sha256):
                bias = store.meta("logit_bias")
                return onnx_indexing.TowerEmbedder(self.index_dir / image_tower.FOLDER, recorded, float(scale),
                                                   None if bias is None else float(bias), runtimes)
            return self._built_tower(recorded, runtimes)
        except Exception:  # noqa: BLE001 - the runtime missing or the files unreadable: torch embeds
            return None

    def _index_vit(self, recorded: ModelIdentity | None) -> VitTower | None:
        """The model's plain open_clip ViT (vit_config.tower) when it is the index's model; None where
        it does not qualify or differs from `recorded` (the torch path refuses that with the usual message)."""
        from clipsearch.model import vit_config

        tower = vit_config.tower(self.spec(), self.download, self.notify)
        if tower is None:
            return None
        identity = tower.identity()
        if recorded is not None and (recorded.weights_sha256, recorded.embed_dim) != (identity.weights_sha256,
                                                                                       identity.embed_dim):
            return None
        return tower

    def _torch_tower(self, recorded: ModelIdentity | None) -> ImageEmbedder | None:
        """For a run torch embeds on the CPU: the model's ViT image tower rebuilt from torch's own
        modules (vit_torch.py), the Embedder's vectors without importing open_clip, torchvision or
        timm (~280 MB resident and seconds of start-up). Kept for the next run of a long-lived
        process. None where the model or the run does not qualify, or the process has the model
        loaded already: then the Embedder embeds, and says what is wrong if anything is."""
        from clipsearch.model import embedder, vit_torch

        if self.loaded is not None or not onnx_indexing.on_cpu(self.device):
            return None
        try:
            precision = embedder.pick_precision(self.precision, "cpu")
            tower = self._index_vit(recorded)
            if tower is None:
                return None  # not a ViT vit_config takes, or not the index's (the Embedder says so)
            identity = tower.identity()
            kept = self._torch_kept
            if kept is None or (kept.identity, kept.precision) != (identity, precision):
                kept = self._torch_kept = vit_torch.TorchVitEmbedder(tower, precision)
            return kept
        except Exception:  # noqa: BLE001 - an unusual file or a precision torch refuses: the Embedder's path
            return None

    def _built_tower(self, recorded: ModelIdentity | None,
                     runtimes: tuple[str, ...] = (onnx_indexing.ORT,)) -> ImageEmbedder | None:
        """The model's ViT image tower built as ONNX from its weights (vit_graph.py), or the one an
        earlier run built; its identity and logit scale read from the weights, as the torch path
        would record them. None where the model does not qualify, or is not the index's."""
        from clipsearch.model import vit_graph

        tower = self._index_vit(recorded)
        if tower is None:
            return None
        identity = tower.identity()
        if background_export.declined(self.index_dir).get(vit_graph.BUILT) == identity.weights_sha256:
            return None  # the background check found it unlike open_clip
        if not vit_graph.built(self.index_dir, identity.weights_sha256):
            vit_graph.build(tower, self.index_dir)
        return onnx_indexing.TowerEmbedder(self.index_dir / image_tower.FOLDER, recorded or identity,
                                           tower.logit_scale(), tower.logit_bias(), runtimes)

    def text(self, recorded: ModelIdentity, background: bool = False) -> Callable[[], TextEncoder]:
        """Whatever embeds texts for this index, when called: the exported text tower when there is
        one (no torch; started on a thread now when `background`), else the model itself."""
        if not text_tower.available(self.index_dir, recorded.weights_sha256):
            if self.loaded is None and self.notify and "text" in background_export.running(self.index_dir):
                self.notify("the text encoder is still being prepared in the background; this query loads "
                            "the full model")
            return lambda: self.checked(recorded)
        kept = self._text_tower
        if kept is not None and kept[0] == recorded.weights_sha256:
            encoder = kept[1]
            return lambda: encoder
        folder = self.index_dir / text_tower.FOLDER
        loading = text_tower.load_in_background(folder) if background else lambda: text_tower.OnnxTextEncoder(folder)

        def loaded() -> text_tower.OnnxTextEncoder:
            encoder = loading()
            self._text_tower = (recorded.weights_sha256, encoder)
            return encoder

        return loaded

    def indexed_photos(self, store: Store, photos: Iterable[str]) -> dict[str, np.ndarray]:
        """Those of `photos` that the index holds (unchanged, or moved or copied: ingest/known.py),
        as their stored vectors: they need no model."""
        from clipsearch.ingest import known

        found = {p: known.stored_vector(store, p) for p in set(photos)}
        return {p: v for p, v in found.items() if v is not None}

    def photo_vector(self, store: Store, recorded: ModelIdentity, path: str, purpose: str) -> np.ndarray:
        """A photo as a vector: the stored one when the index holds it, else embedded (embed_photo)."""
        stored = self.indexed_photos(store, [path]).get(path)
        return stored if stored is not None else self.embed_photo(recorded, path, purpose)

    def image_tower_ready(self, recorded: ModelIdentity) -> bool:
        """Whether photos from outside the index embed without torch (an exported image tower)."""
        return image_tower.available(self.index_dir, recorded.weights_sha256)

    def _onnx_images(self, recorded: ModelIdentity) -> image_tower.ImageEncoder | None:
        """The exported image tower of these weights, loaded once; None where there is none (or it fails)."""
        kept = self._image_tower
        if kept is not None and kept[0] == recorded.weights_sha256:
            return kept[1]
        if not self.image_tower_ready(recorded):
            return None
        try:
            encoder = image_tower.load(self.index_dir / image_tower.FOLDER)  # ONNX Runtime or OpenVINO
        except Exception:  # noqa: BLE001 - a runtime gap costs speed, not the query: torch answers
            return None
        self._image_tower = (recorded.weights_sha256, encoder)
        return encoder

    def embed_photo(self, recorded: ModelIdentity, path: str, purpose: str) -> np.ndarray:
        """One photo from outside the index, decoded and embedded as indexing would.

        The one place a photo meets the model at query time (query images, `learn` examples), and the
        one place that picks how: the exported ONNX image tower when the index has one (no
        torch), else the model itself, which then starts the tower's export in the background so
        the next such query needs no torch (image_export.py says why not at index time).
        """
        from clipsearch.ingest import images

        onnx = self._onnx_images(recorded)
        if onnx is not None:
            pre, embed = onnx.preprocess, onnx.embed_images
        else:
            emb = self.checked(recorded)
            pre, embed = emb.preprocess, emb.embed_images
        try:
            decoded = images.decode(path, pre)
        except images.SkipFile as skip:
            raise UsageError(f"cannot use {paths.display(path)} as {purpose}: {skip}") from None
        vector = embed(decoded.pixels[None])[0]
        if onnx is None:
            from clipsearch.model import image_export

            if image_export.enabled() and (self.index_dir / DB_NAME).exists():
                image_export.start_in_background(self.index_dir, recorded.name, recorded.weights_sha256)
        return vector
