"""The ViT image tower built as ONNX without torch (model/vit_graph.py) answers like open_clip.

Small random open_clip ViTs of several kinds (GELU and QuickGELU, LayerScale, class-token and
average pooling, ln_post before or after it, no ln_pre, another LayerNorm epsilon), their
LayerNorms and LayerScales perturbed so that none is the identity, saved as a user would have
them (safetensors and open_clip_config.json in a folder); the graph's vectors are compared with
open_clip's own fp32 `encode_image`, its preprocessing with the Embedder's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapes
import torch

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.model import background_export, image_export, image_tower, names, onnx_indexing, vit_config, vit_graph
from clipsearch.model.embedder import Embedder

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 16, "patch_size": 16}},
    "quick-ls": {"quick_gelu": True, "vision_cfg": {"image_size": 48, "layers": 2, "width": 48, "head_width": 16,
                                                    "patch_size": 16, "ls_init_value": 0.5}},
    "avg-after-no-pre": {"vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 8, "patch_size": 16,
                                        "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True}},
    "avg-eps-mlp": {"init_logit_bias": -10.0,
                    "vision_cfg": {"image_size": 32, "layers": 3, "width": 40, "head_width": 20, "patch_size": 8,
                                   "pool_type": "avg", "mlp_ratio": 2.0, "norm_kwargs": {"eps": 1e-6}}},
}
PREPROCESS = {"plain": {}, "quick-ls": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]},
              "avg-after-no-pre": {"interpolation": "bilinear", "resize_mode": "squash", "size": 999},
              "avg-eps-mlp": {"resize_mode": "longest", "fill_color": 7}}


def _save(folder: Path, model_cfg: dict[str, Any], preprocess: dict[str, Any], seed: int) -> Path:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    with torch.no_grad():
        for name, p in model.visual.named_parameters():
            if ".ln_" in name or name.startswith("ln_") or ".ls_" in name:
                p.add_(0.3 * torch.randn_like(p))  # a LayerNorm or LayerScale that does something
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / names.SAFETENSORS_NAME))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    return folder


@pytest.fixture(scope="session")
def vits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vits")
    return {name: _save(root / name, {"embed_dim": 24, "text_cfg": TEXT, **cfg}, PREPROCESS[name], i)
            for i, (name, cfg) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="session")
def references(vits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Embedder]:
    """Each model loaded by the torch path in fp32 (sessions fixtures run before `isolated`)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(tmp_path_factory.mktemp("vit-home")))
        return {name: Embedder(names.parse(f"local-dir:{folder}"), "cpu", "fp32") for name, folder in vits.items()}


def _pixels(size: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.concatenate([rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8),
                           image_tower.check_pixels(image_tower.Preprocess(size, (0, 0, 0), (1, 1, 1)))])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_graph_gives_open_clips_vectors_preprocessing_and_identity(variant: str, vits: dict[str, Path],
                                                                      references: dict[str, Embedder],
                                                                      tmp_path: Path) -> None:
    emb = references[variant]
    tower = vit_config.tower(names.parse(f"local-dir:{vits[variant]}"))
    assert tower is not None
    assert tower.preprocess == emb.preprocess
    assert tower.identity() == emb.identity
    assert tower.logit_scale() == pytest.approx(emb.logit_scale, rel=1e-6)
    assert tower.logit_bias() == (None if emb.logit_bias is None else pytest.approx(emb.logit_bias))
    folder = vit_graph.build(tower, tmp_path)
    pixels = _pixels(emb.preprocess.size)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(emb.model.encode_image(
            torch.from_numpy(image_tower.normalise(pixels, emb.preprocess))), dim=-1).numpy()
    got = image_tower.OnnxImageEncoder(folder).embed_images(pixels)
    assert float(np.min(np.sum(ref * got, axis=1))) >= 0.9999


def test_the_hand_written_model_file_is_valid_onnx(vits: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    tower = vit_config.tower(names.parse(f"local-dir:{vits['plain']}"))
    assert tower is not None
    path = vit_graph.graph(tower, tmp_path)
    onnx.checker.check_model(str(path), full_check=True)  # the path form reads the external weights too
    model = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["features"]
    assert model.opset_import[0].version == vit_graph.OPSET


def test_a_config_file_model_takes_its_forced_preprocessing(vits: dict[str, Path], tmp_path: Path) -> None:
    """CONFIG.json:CHECKPOINT: the file's preprocess_cfg is forced over open_clip's defaults."""
    cfg = json.loads((vits["quick-ls"] / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"] = {"mean": [0.1, 0.2, 0.3], "interpolation": "bilinear", "fill_color": 3, "std": None}
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    spec = names.parse(f"{tmp_path / 'm.json'}:{vits['quick-ls'] / names.SAFETENSORS_NAME}")
    tower = vit_config.tower(spec)
    assert tower is not None and tower.preprocess.mean == (0.1, 0.2, 0.3) and tower.preprocess.size == 48
    assert tower.preprocess == Embedder(spec, "cpu", "fp32").preprocess


def test_the_catalogue_tags_and_built_in_configs_are_open_clips() -> None:
    import open_clip

    for name, tag in vit_config.TAGS.items():
        arch, pretrained = name.split(":", 1)
        theirs = open_clip.pretrained.get_pretrained_cfg(arch, pretrained)
        assert {k: theirs[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in theirs} == \
            {k: v for k, v in tag.items() if k != "quick_gelu"}, name
        assert bool(theirs.get("quick_gelu", False)) == bool(tag.get("quick_gelu", False)), name
        got = vit_config.configs(names.parse(name), download=False)
        assert got is not None and got[0] == open_clip.get_model_config(arch), name


def test_towers_it_does_not_build_are_left_to_torch(vits: dict[str, Path], tmp_path: Path) -> None:
    from conftest import TINY_MODEL_DIR

    assert vit_config.tower(names.parse(f"local-dir:{TINY_MODEL_DIR}")) is None  # ModifiedResNet
    assert vit_config.tower(names.parse("ViT-B-32:some-other-tag")) is None  # a tag not in TAGS
    for change in ({"attentional_pool": True}, {"timm_model_name": "vit_tiny"}, {"qk_norm": True},
                   {"pool_type": "none"}, {"act_kwargs": {"approximate": "tanh"}}, {"something_new": 1}):
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(vits["plain"], folder)
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        cfg["model_cfg"]["vision_cfg"].update(change)
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
        assert vit_config.tower(names.parse(f"local-dir:{folder}")) is None, change
    # A checkpoint whose keys are not exactly the tower's, and one that is not safetensors.
    from safetensors.torch import load_file, save_file

    renamed = tmp_path / "renamed"
    shutil.copytree(vits["plain"], renamed)
    state = load_file(str(renamed / names.SAFETENSORS_NAME))
    state["visual.proj_renamed"] = state.pop("visual.proj")
    save_file(state, str(renamed / names.SAFETENSORS_NAME))
    assert vit_config.tower(names.parse(f"local-dir:{renamed}")) is None
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(vits["plain"] / "open_clip_config.json", pickled)
    torch.save(load_file(str(vits["plain"] / names.SAFETENSORS_NAME)), pickled / names.BIN_NAME)
    assert vit_config.tower(names.parse(f"local-dir:{pickled}")) is None


def _vectors(index: Path) -> dict[str, np.ndarray]:
    with Store.open(index) as store:
        ids = {r.path: store.id_for_path(r.path) for r in store.iter_images()}
        return {p: store.vectors_of_ids([i])[0] for p, i in ids.items() if i is not None}


def test_a_first_index_of_a_vit_runs_without_torch_and_is_verified_later(
        vits: dict[str, Path], references: dict[str, Embedder], isolated: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = f"local-dir:{vits['quick-ls']}"
    photos = tmp_path / "photos"
    shapes.write_heldout(photos, per_class=1, seed=31)
    code = ("import sys; from clipsearch.cli import main; sys.argv = ['clipsearch', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch was loaded'")
    env = {**os.environ, "CLIPSEARCH_HOME": str(isolated), "CLIPSEARCH_MODEL": model, "CLIPSEARCH_IMAGE_MODEL": "on"}
    run = subprocess.run([sys.executable, "-c", code, "index", str(photos), "--json", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["embedded_with"] == "onnx fp32"
    index = isolated / "index"
    emb = references["quick-ls"]
    with Store.open(index) as store:
        assert store.model_identity() == emb.identity
        assert float(store.meta("logit_scale") or 0) == pytest.approx(emb.logit_scale, rel=1e-6)
    # Queries do not take it before open_clip has vouched for it; the background check does that.
    assert vit_graph.built(index, emb.identity.weights_sha256)
    assert not image_tower.available(index, emb.identity.weights_sha256)
    # The same photos through torch (fp32, and the precision this machine picks) give the same vectors.
    monkeypatch.setenv("CLIPSEARCH_MODEL", model)
    onnx = _vectors(index)
    for precision in ("fp32", None):
        other = tmp_path / f"torch-{precision}"
        done = Library(index=other, device="cpu", precision=precision).index([photos])
        assert done.embedded_with.startswith("torch")
        theirs = _vectors(other)
        assert min(float(v @ theirs[p]) for p, v in onnx.items()) >= 0.999, precision
    assert image_export.verify_built(emb, index)
    assert image_tower.available(index, emb.identity.weights_sha256)


def test_a_graph_unlike_open_clip_is_not_verified_and_not_built_again(
        vits: dict[str, Path], references: dict[str, Embedder], isolated: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    emb = references["plain"]
    tower = vit_config.tower(names.parse(f"local-dir:{vits['plain']}"))
    assert tower is not None
    index = tmp_path / "index"
    index.mkdir()
    folder = vit_graph.build(tower, index)
    data = folder / "model.opt.onnx.data"
    raw = bytearray(data.read_bytes())
    weights = np.frombuffer(raw, dtype=np.float32)
    np.random.default_rng(0).shuffle(weights)  # same size, other numbers: still "whole"
    data.write_bytes(bytes(raw))
    assert vit_graph.built(index, emb.identity.weights_sha256)
    assert not image_export.verify_built(emb, index)
    assert not image_tower.available(index, emb.identity.weights_sha256)
    monkeypatch.setattr(os, "nice", lambda _: 0)  # the exporter's; not this test process's
    monkeypatch.setenv("CLIPSEARCH_IMAGE_MODEL", "on")
    assert background_export._main(index, emb.spec.name, emb.identity.weights_sha256, ["image"]) == 0
    assert background_export.declined(index).get(vit_graph.BUILT) == emb.identity.weights_sha256
    # The torch export replaced it, verified.
    assert image_tower.available(index, emb.identity.weights_sha256)
    assert "built" not in json.loads((folder / "meta.json").read_text())
    monkeypatch.setattr(onnx_indexing, "gpu_possible", lambda: False)
    from clipsearch.encoders import Encoders

    shutil.rmtree(folder)
    assert Encoders(index, emb.spec.name, "cpu", None, False, None)._built_tower(None) is None


def test_a_hub_model_is_read_from_the_hub_cache_like_open_clip_reads_it(vits: dict[str, Path], isolated: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """hf-hub:ORG/REPO: its open_clip_config.json and weights from the Hugging Face cache (offline)."""
    from huggingface_hub import constants

    # huggingface_hub read its environment when first imported: point it at this test's cache.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(isolated / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = isolated / "hub" / "models--someone--tiny-vit"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(vits["avg-after-no-pre"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    spec = names.parse("hf-hub:someone/tiny-vit")
    tower = vit_config.tower(spec)
    assert tower is not None
    emb = Embedder(spec, "cpu", "fp32")
    assert tower.preprocess == emb.preprocess and tower.identity() == emb.identity


def test_openvino_runs_a_verified_graph_within_its_own_check(vits: dict[str, Path], references: dict[str, Embedder],
                                                             tmp_path: Path) -> None:
    """The graph is plain ONNX (opset 17): OpenVINO, the other runtime image_tower.load picks, reads it too."""
    pytest.importorskip("openvino")
    from clipsearch.model import openvino_tower

    emb = references["avg-eps-mlp"]
    tower = vit_config.tower(names.parse(f"local-dir:{vits['avg-eps-mlp']}"))
    assert tower is not None
    folder = vit_graph.build(tower, tmp_path)
    assert image_export.verify_built(emb, tmp_path)
    for precision in ("fp32", "bf16"):
        encoder = openvino_tower.load_checked(folder, precision)
        assert encoder is not None and encoder.check_cosine >= image_tower.MIN_COSINE, precision
