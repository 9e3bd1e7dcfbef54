"""Naming models, finding weights offline, and the clear error when they are not here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import TINY_MODEL, TINY_MODEL_DIR

from clipsearch import config
from clipsearch.errors import ModelError, ModelNotAvailableError, UsageError
from clipsearch.model import names
from clipsearch.model.embedder import Embedder


def test_parse_forms(tmp_path: Path) -> None:
    spec = names.parse("ViT-B-32-256:datacomp_s34b_b86k")
    assert (spec.kind, spec.arch, spec.tag) == ("pretrained", "ViT-B-32-256", "datacomp_s34b_b86k")
    local = names.parse(f"local-dir:{tmp_path}")
    assert local.kind == "local-dir" and local.path == str(tmp_path)
    cfg = names.parse(f"{tmp_path}/arch.json:{tmp_path}/w.safetensors")
    assert cfg.kind == "config" and cfg.path.endswith("arch.json") and cfg.checkpoint.endswith("w.safetensors")
    assert names.parse("hf-hub:org/repo").kind == "hf-hub"


@pytest.mark.parametrize("bad", ["", "ViT-B-32", "local-dir:", "hf-hub:norepo"])
def test_parse_rejects_names_without_weights(bad: str) -> None:
    with pytest.raises(UsageError):
        names.parse(bad)


def test_default_model_is_in_the_catalogue() -> None:
    catalog = [e.name for e in names.CATALOG]
    assert config.DEFAULT_MODEL in catalog
    assert all((e.imagenet_zero_shot is None or 0 < e.imagenet_zero_shot < 100) and e.size_mb > 0
               for e in names.CATALOG)


def test_tiny_model_resolves_locally() -> None:
    path = names.resolve_weights(names.parse(TINY_MODEL), download=False)
    assert path == TINY_MODEL_DIR / "open_clip_model.safetensors"


def test_offline_error_names_the_file_and_the_fixes() -> None:
    spec = names.parse(config.DEFAULT_MODEL)
    with pytest.raises(ModelNotAvailableError) as info:
        names.resolve_weights(spec)  # HF_HUB_OFFLINE=1 and an empty HF cache (conftest)
    msg = str(info.value)
    assert "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K" in msg
    assert "open_clip_model.safetensors" in msg
    assert f"clipsearch models download {config.DEFAULT_MODEL}" in msg
    assert "local-dir:" in msg


def test_download_goes_through_the_hub_and_reports_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tested up to the network boundary: the hub client is called with the right repo and file."""
    import huggingface_hub

    calls: list[tuple[str, str]] = []

    def refuse(repo_id: str, filename: str, **_: object) -> str:
        calls.append((repo_id, filename))
        raise ConnectionError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda: True)  # past the quick probe, to the client
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(ModelNotAvailableError, match="download failed: ConnectionError"):
        names.resolve_weights(names.parse(config.DEFAULT_MODEL))
    assert calls[0] == ("laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K", "open_clip_model.safetensors")


def test_download_returns_the_cached_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"x")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda: True)  # past the quick probe, to the client
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: str(weights))
    assert names.resolve_weights(names.parse(config.DEFAULT_MODEL)) == weights


def test_unknown_tag_lists_known_ones() -> None:
    with pytest.raises(ModelError, match=r"known tags for ViT-B-32:.*openai"):
        names.resolve_weights(names.parse("ViT-B-32:no_such_tag"))


def test_local_dir_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no open_clip_model\.safetensors"):
        names.resolve_weights(names.parse(f"local-dir:{tmp_path}"))


def test_sha256_matches_hashlib_and_is_cached() -> None:
    path = TINY_MODEL_DIR / "open_clip_model.safetensors"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert names.sha256_of(path) == expected
    assert (config.data_home() / "weights-sha256.json").exists()
    assert names.sha256_of(path) == expected


def test_catalogue_hub_locations_match_open_clip() -> None:
    from open_clip.pretrained import get_pretrained_cfg

    for entry in names.CATALOG:
        spec = names.parse(entry.name)
        assert get_pretrained_cfg(spec.arch, spec.tag)["hf_hub"] == entry.hf_hub


def test_config_json_plus_checkpoint_is_the_same_model(tmp_path: Path, tiny_embedder: Embedder) -> None:
    import json

    import numpy as np

    cfg = json.loads((TINY_MODEL_DIR / "open_clip_config.json").read_text())
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(cfg))
    emb = Embedder(names.parse(f"{cfg_file}:{TINY_MODEL_DIR / 'open_clip_model.safetensors'}"))
    assert emb.identity.weights_sha256 == tiny_embedder.identity.weights_sha256
    assert emb.preprocess == tiny_embedder.preprocess
    a = emb.embed_texts(["a red circle"])
    b = tiny_embedder.embed_texts(["a red circle"])
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_unreachable_hub_fails_once_with_a_short_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[str] = []

    def unreachable(repo_id: str, filename: str, **_: object) -> str:
        calls.append(filename)
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache ... connection")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda: True)  # past the quick probe, to the client
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ModelNotAvailableError, match="could not reach the Hugging Face Hub"):
        names.resolve_weights(names.parse(config.DEFAULT_MODEL))
    assert calls == ["open_clip_model.safetensors"]  # no pointless second try while offline


def test_a_missing_safetensors_falls_back_to_the_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    class NotFoundError(OSError):
        response = type("R", (), {"status_code": 404})()

    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"x")

    def only_bin(repo_id: str, filename: str, **_: object) -> str:
        if filename.endswith(".safetensors"):
            raise NotFoundError("404")
        return str(weights)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda: True)  # past the quick probe, to the client
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", only_bin)
    assert names.resolve_weights(names.parse(config.DEFAULT_MODEL)) == weights
