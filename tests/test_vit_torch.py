"""open_clip's ViT image tower rebuilt in plain torch (model/vit_torch.py) gives the Embedder's vectors.

Small random open_clip ViTs of the kinds vit_config accepts (GELU and QuickGELU, LayerScale,
class-token and average pooling, ln_post before or after it, no ln_pre, another LayerNorm epsilon,
a logit bias), their LayerNorms and LayerScales perturbed so that none is the identity, saved as a
user would have them; the rebuilt tower is compared with the Embedder (open_clip's own model) in
fp32 and bf16, and an index run that torch embeds is checked to take it without open_clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapes
from test_vit_graph import TEXT, VARIANTS, _save

from clipsearch.encoders import Encoders
from clipsearch.index.store import Store
from clipsearch.ingest import images
from clipsearch.model import image_tower, names, vit_config, vit_torch
from clipsearch.model.embedder import Embedder


@pytest.fixture(scope="session")
def torch_vits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch-vits")
    return {name: _save(root / name, {"embed_dim": 24, "text_cfg": TEXT, **cfg}, {}, 40 + i)
            for i, (name, cfg) in enumerate(VARIANTS.items())}


def _pixels(size: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.concatenate([rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8),
                           image_tower.check_pixels(image_tower.Preprocess(size, (0, 0, 0), (1, 1, 1)))])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_rebuilt_tower_gives_the_embedders_vectors_in_fp32_and_bf16(variant: str,
                                                                          torch_vits: dict[str, Path]) -> None:
    spec = names.parse(f"local-dir:{torch_vits[variant]}")
    tower = vit_config.tower(spec)
    assert tower is not None
    for precision in ("fp32", "bf16"):
        theirs = Embedder(spec, "cpu", precision)
        ours = vit_torch.TorchVitEmbedder(tower, precision)
        assert (ours.identity, ours.preprocess, ours.runtime) == (theirs.identity, theirs.preprocess, theirs.runtime)
        assert (ours.logit_scale, ours.logit_bias) == (theirs.logit_scale, theirs.logit_bias)
        assert "text" not in {k.split(".")[0] for k, _ in ours.model.named_parameters()}  # the image tower alone
        px = _pixels(tower.image_size)
        a, b = ours.embed_images(px), theirs.embed_images(px)
        assert a.dtype == np.float32 and a.shape == b.shape
        # The same modules in the same order: the same kernels, so the same numbers.
        assert float(np.abs(a - b).max()) <= 1e-6, precision
    fp32 = Embedder(spec, "cpu", "fp32").embed_images(px)
    assert float((vit_torch.TorchVitEmbedder(tower, "bf16").embed_images(px) * fp32).sum(axis=1).min()) >= 0.999


def test_an_index_run_torch_embeds_takes_the_rebuilt_tower_without_open_clip(
        torch_vits: dict[str, Path], isolated: Path, tmp_path: Path) -> None:
    model = f"local-dir:{torch_vits['quick-ls']}"
    photos = tmp_path / "photos"
    shapes.write_heldout(photos, per_class=1, seed=32)
    code = ("import sys; from clipsearch.cli import main; sys.argv = ['clipsearch', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' in sys.modules, 'torch did not run'\n"
            "gone = [m for m in ('open_clip', 'torchvision', 'timm', 'torch._dynamo') if m in sys.modules]\n"
            "assert not gone, gone")
    # The exported tower off: torch embeds every run, as it does above the crossover without OpenVINO.
    env = {**os.environ, "CLIPSEARCH_HOME": str(isolated), "CLIPSEARCH_MODEL": model, "CLIPSEARCH_IMAGE_MODEL": "off"}
    run = subprocess.run([sys.executable, "-c", code, "index", str(photos), "--json", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    emb = Embedder(names.parse(model), "cpu")
    assert json.loads(run.stdout)["embedded_with"] == emb.runtime
    with Store.open(isolated / "index") as store:
        assert store.model_identity() == emb.identity
        assert float(store.meta("logit_scale") or 0) == emb.logit_scale
        stored = {r.path: store.vectors_of_ids([store.id_for_path(r.path)])[0] for r in store.iter_images()}
    assert len(stored) == len(list(photos.iterdir()))
    for path, vector in stored.items():
        want = emb.embed_images(images.decode(path, emb.preprocess).pixels[None])[0]
        assert float(vector @ want) >= 0.99999, path


def test_the_embedder_keeps_runs_the_rebuilt_tower_cannot_take(torch_vits: dict[str, Path], isolated: Path) -> None:
    model = f"local-dir:{torch_vits['plain']}"
    enc = Encoders(isolated / "index", model, "cpu", None, False, None)
    kept = enc._torch_tower(None)
    assert isinstance(kept, vit_torch.TorchVitEmbedder)
    assert enc._torch_tower(None) is kept  # a long-lived process builds it once
    other = Embedder(names.parse(f"local-dir:{torch_vits['avg-eps-mlp']}"), "cpu").identity
    assert enc._torch_tower(other) is None  # another model's index: the Embedder refuses it
    assert Encoders(isolated / "index", model, "cuda", None, False, None)._torch_tower(None) is None
    assert Encoders(isolated / "index", None, "cpu", None, False, None)._torch_tower(None) is None  # tiny: a ResNet
    enc.embedder()  # a process with the model loaded embeds with it, and keeps one copy
    assert enc._torch_tower(None) is None and enc._torch_kept is None
