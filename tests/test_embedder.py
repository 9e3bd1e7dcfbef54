"""The model layer on the tiny trained CLIP: same loading path as a real model, real semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapes
from conftest import TINY_MODEL

from clipsearch.ingest import images
from clipsearch.model import embedder, names
from clipsearch.model.embedder import Embedder


def _embed_files(emb: Embedder, paths: list[Path]) -> np.ndarray:
    pixels = np.stack([images.decode(str(p), emb.preprocess).pixels for p in paths])
    return emb.embed_images(pixels)


def test_identity_records_name_dim_and_hash(tiny_embedder: Embedder) -> None:
    ident = tiny_embedder.identity
    assert ident.name == names.parse(TINY_MODEL).name
    assert ident.embed_dim == 64
    assert len(ident.weights_sha256) == 64
    assert tiny_embedder.preprocess.size == 64


def test_outputs_are_normalised_float32(tiny_embedder: Embedder, heldout: list) -> None:
    img = _embed_files(tiny_embedder, [p for p, _, _ in heldout[:5]])
    txt = tiny_embedder.embed_texts(["a red circle", "two blue squares"])
    for arr, n in ((img, 5), (txt, 2)):
        assert arr.dtype == np.float32 and arr.shape == (n, 64)
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def test_zero_shot_colour_and_shape_accuracy(tiny_embedder: Embedder, heldout: list) -> None:
    prompts = shapes.class_prompts()
    text = tiny_embedder.embed_texts([p for _, _, p in prompts])
    feats = _embed_files(tiny_embedder, [p for p, _, _ in heldout])
    pred = (feats @ text.T).argmax(axis=1)
    hits = sum(prompts[i][:2] == (c, s) for i, (_, c, s) in zip(pred, heldout, strict=True))
    accuracy = hits / len(heldout)
    assert accuracy >= 0.90, f"48-way zero-shot accuracy {accuracy:.1%}"


def test_text_to_image_top1_has_the_asked_colour_and_shape(tiny_embedder: Embedder, heldout: list) -> None:
    feats = _embed_files(tiny_embedder, [p for p, _, _ in heldout])
    for color, shape in [("red", "circle"), ("blue", "square"), ("yellow", "star"), ("green", "ring")]:
        q = tiny_embedder.embed_texts([f"a photo of a {color} {shape}"])[0]
        best = int(np.argmax(feats @ q))
        assert heldout[best][1:] == (color, shape)


def test_cutting_tokens_after_the_end_token_changes_nothing() -> None:
    import torch

    fp32 = Embedder(names.parse(TINY_MODEL), precision="fp32")
    texts = ["a red circle", "three small purple crosses on a noisy background", "ring"]
    tokens = fp32.tokenizer(texts)
    with torch.inference_mode():
        full = fp32.model.encode_text(tokens)
        short = embedder.encode_texts(fp32.model, tokens)
    assert tokens.shape[1] == 24 and short.shape == full.shape
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-4)


def test_bf16_agrees_with_fp32(heldout: list) -> None:
    fp32 = Embedder(names.parse(TINY_MODEL), precision="fp32")
    bf16 = Embedder(names.parse(TINY_MODEL), precision="bf16")
    paths = [p for p, _, _ in heldout[:16]]
    a, b = _embed_files(fp32, paths), _embed_files(bf16, paths)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.99
    assert fp32.identity == bf16.identity  # precision is how we run it, not which model it is


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    """AVX2-only CPUs (most laptops) must run fp32: emulated bf16 measured 20-38x slower there."""
    line = "flags\t\t: fpu sse2 avx avx2 fma {}\n"
    assert not embedder.cpu_has_native_bf16("processor\t: 0\n" + line.format("avx512f avx512_vnni"))
    assert embedder.cpu_has_native_bf16(line.format("avx512f avx512_bf16"))
    assert embedder.cpu_has_native_bf16(line.format("amx_tile amx_bf16"))
    assert not embedder.cpu_has_native_bf16("model name\t: avx512_bf16 lookalike\n" + line.format(""))
    assert not embedder.cpu_has_native_bf16("")


def test_device_and_precision_choice() -> None:
    assert embedder.pick_device("cpu") == "cpu"
    assert embedder.pick_precision(None, "cuda") == "fp16"
    assert embedder.pick_precision("fp32", "cpu") == "fp32"
    expected = "bf16" if embedder.cpu_has_native_bf16() else "fp32"
    assert embedder.pick_precision("auto", "cpu") == expected
    with pytest.raises(Exception, match="unknown precision"):
        embedder.pick_precision("int3", "cpu")
    with pytest.raises(Exception, match="unknown device"):
        embedder.pick_device("tpu")
