"""What an index records about its model, and how pixels become model input: plain data, no torch.

The index, the decoder and the query path need these; only the embedder needs torch to act on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsearch.errors import ModelMismatchError


@dataclass(frozen=True)
class ModelIdentity:
    """What the index records so that vectors from different models are never mixed."""

    name: str
    embed_dim: int
    weights_sha256: str

    def describe(self) -> str:
        return f"{self.name} (dim {self.embed_dim}, weights sha256 {self.weights_sha256[:12]}…)"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor (open_clip's eval transform, as data)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0  # the padding of resize_mode "longest"


def check_same_model(recorded: ModelIdentity, wanted: ModelIdentity) -> None:
    """Refuse a model whose vectors would not be comparable with the index's."""
    if recorded.weights_sha256 != wanted.weights_sha256 or recorded.embed_dim != wanted.embed_dim:
        raise ModelMismatchError(
            f"this index was built with {recorded.describe()}, not {wanted.describe()}; "
            "use the index's model (omit --model), or rebuild with `clipsearch index --rebuild`")
