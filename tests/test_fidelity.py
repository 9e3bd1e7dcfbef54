"""clipsearch computes what open_clip computes (issue 15): the proof that real weights search well.

No pretrained weights reach these machines, so a real architecture with random weights stands in:
random weights make scores crowded, which is the hard case for ranking agreement. clipsearch
indexes a few real photos (scikit-image's) in many formats and answers text queries through its
own path (exported ONNX text tower, SQLite vectors, FAISS); the reference is plain open_clip: fp32,
a full PIL decode, `exif_transpose`, `convert("RGB")` and the model's own preprocess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.ingest import images

QUERIES = ["a woman in a space suit", "a cup of coffee on a table", "a cat looking at the camera",
           "a rocket on the launch pad", "a man with a camera", "brick wall", "grass", "gravel path",
           "a photo at night", "a black and white photo", "a close-up", "12:30 lunch with friends",
           "a 16:9 screenshot", "my cute dog", "sunset over the sea", "Café au lait ☕",
           "two people hiking in the mountains", "a receipt", "a blurry picture", "the astronaut's flag"]


def _random_model(folder: Path, arch: str) -> str:
    """open_clip `arch` with random weights (seed 0), in the local-dir layout clipsearch loads."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    size = model.visual.image_size
    cfg = {"model_cfg": open_clip.get_model_config(arch),
           "preprocess_cfg": {"size": size[0] if isinstance(size, tuple) else size}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return f"local-dir:{folder}"


def _photos(folder: Path, model_size: int) -> dict[str, bool]:
    """Real photos in a dozen formats and modes, some stored sideways; {path: decoded with draft}."""
    from skimage import data

    folder.mkdir()
    ast, coffee, cat, rocket = (Image.fromarray(f()) for f in (data.astronaut, data.coffee, data.chelsea,
                                                                 data.rocket))
    cam = Image.fromarray(data.camera())
    brick, grass, gravel = (Image.fromarray(f()).convert("RGB") for f in (data.brick, data.grass, data.gravel))
    out: dict[str, bool] = {}

    def save(img: Image.Image, name: str, orientation: int = 1, **kw: Any) -> None:
        path = folder / name
        exif = Image.Exif()
        if orientation != 1:
            exif[0x0112] = orientation
            kw["exif"] = exif.tobytes()
        img.save(path, **kw)
        out[str(path)] = False

    save(ast, "astronaut.jpg", 6, quality=92)
    save(ast.crop((100, 0, 512, 300)), "astronaut-crop.png", 8)
    save(coffee, "coffee.png")
    save(coffee.convert("CMYK"), "coffee-cmyk.jpg", quality=95)
    save(coffee.quantize(200), "coffee.gif")
    save(cat, "chelsea.webp", 3, quality=90)
    save(cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "chelsea.bmp")
    save(rocket.quantize(256), "rocket-palette.png")
    save(rocket, "rocket.tiff", 5)
    save(cam, "camera-grey.png")
    save(cam.convert("1"), "camera-1bit.png")
    save(cam, "camera.jpg", 2, quality=90)
    save(brick, "brick.jpg", quality=90)
    save(grass, "grass.png", 7)
    save(gravel, "gravel.webp", lossless=True)
    if features.check("jpg_2000"):
        save(ast.resize((300, 300)), "astronaut.jp2")
    if images.heif_available():
        images._register_heif()
        save(coffee, "coffee.heic", 6, quality=90)
    # Large JPEGs: textures tiled at native scale (the worst case) and an upscaled photo. Just over
    # 2x and 4x the model size they decode in full (under DRAFT_MARGIN); at 6.3x and 8.05x draft
    # reduces them by 2 and 4.
    for short in (round(model_size * 2.1), round(model_size * 4.05), round(model_size * 6.3),
                  round(model_size * 8.05)):
        for name, src in (("gravel", gravel), ("cat", cat)):
            size = (short * 4 // 3, short)
            if name == "cat":
                img = src.resize(size, Image.Resampling.BICUBIC)
            else:
                img = Image.new("RGB", size)
                for x in range(0, size[0], src.width):
                    for y in range(0, size[1], src.height):
                        img.paste(src, (x, y))
            save(img, f"big-{name}-{short}.jpg", 6 if name == "cat" else 1, quality=90)
            with Image.open(folder / f"big-{name}-{short}.jpg") as im:
                req = int(np.ceil(model_size * images.DRAFT_MARGIN))
                out[str(folder / f"big-{name}-{short}.jpg")] = min(im.width // req, im.height // req) >= 2
    return out


def _reference(model_name: str, paths: list[str], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Plain open_clip at fp32: image vectors of `paths` and text vectors of `texts`, normalised."""
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, weights_only=True)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    pix = []
    for p in paths:
        with Image.open(p) as im:
            pix.append(preprocess(ImageOps.exif_transpose(im).convert("RGB")))
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack(pix)), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    return img.numpy(), txt.numpy()


def _check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, min_overlap: float) -> dict[str, float]:
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    model = _random_model(tmp_path / "model", arch)
    import open_clip

    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    drafted = _photos(tmp_path / "photos", size)
    lib = Library(model=model)
    summary = lib.index([tmp_path / "photos"])
    assert not summary.skipped_files, summary.skipped_files
    paths = sorted(drafted)
    ref_img, ref_txt = _reference(model, paths, QUERIES)
    store = Store.open(lib.path)
    try:
        ids = [store.id_for_path(p) for p in paths]
        assert None not in ids, "every photo is indexed"
        got_img = store.vectors_of_ids(np.array(ids, dtype=np.int64))
        overlaps = []
        for q, ref in zip(QUERIES, ref_txt, strict=True):
            hits = lib.query(q, top=10, min_score=-1).results
            want = {paths[i] for i in np.argsort(-(ref_img @ ref))[:10]}
            overlaps.append(len({h.path for h in hits} & want) / 10)
        sha = store.model_identity().weights_sha256  # type: ignore[union-attr]
        cached = store.cached_text_vectors(sha, QUERIES)  # the vectors the queries were answered with
    finally:
        store.close()
    assert (lib.path / "text-model" / "meta.json").exists(), "queries went through the exported text tower"
    got_txt = np.stack([cached[q] for q in QUERIES])
    img_cos = np.sum(got_img * ref_img, axis=1)
    txt_cos = np.sum(got_txt * ref_txt, axis=1)
    plain = np.array([not drafted[p] for p in paths])
    assert plain.sum() >= 15 and (~plain).sum() >= 4
    result = {"image_min": float(img_cos[plain].min()), "draft_min": float(img_cos[~plain].min()),
              "text_min": float(txt_cos.min()), "overlap10": float(np.mean(overlaps))}
    # Decodes equal open_clip's pixel for pixel (test_preprocess_fidelity.py); what is left is the
    # bf16 image tower where the CPU has bf16 units (measured >= 0.99994 on ViT-B-32), so 0.999.
    assert result["image_min"] >= 0.999, result
    # Draft-decoded JPEGs: the rule's measured worst case is 0.9984 (docs/fidelity.md), 0.99945
    # here; the floor is 0.995.
    assert result["draft_min"] >= 0.995, result
    # The text tower is fp32 ONNX: 1.00000 against open_clip in bench_text_precision; 0.9995 is the
    # issue's floor and what the export itself checks.
    assert result["text_min"] >= 0.9995, result
    assert result["overlap10"] >= min_overlap, result
    return result


def test_index_and_query_agree_with_open_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 25 photos and 20 queries. Vectors this close (image >= 0.9998, text 1.0000) can only swap
    # near-ties, but random weights crowd the scores, so a bf16 wobble may swap the 10th and 11th
    # photo of a query (0.1 off that query's overlap): measured 0.98 (0.985 with the old draft rule).
    # 0.95 allows such swaps on half the queries, and fails a systematic gap such as a shifted crop.
    _check(tmp_path, monkeypatch, "ViT-S-32", min_overlap=0.95)


@pytest.mark.heavy
def test_index_and_query_agree_with_open_clip_vit_b_32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check(tmp_path, monkeypatch, "ViT-B-32", min_overlap=0.97)
