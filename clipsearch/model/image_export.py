"""Exporting a model's image tower to ONNX, verified against open_clip at fp32 (torch side).

image_tower.py runs the result, so `query --image` of a photo that is not indexed needs no torch.

When: never in the critical path. ViT-B-32's export took 15.6 s on 2 cores (torch.onnx's dynamo
exporter; the TorchScript one cannot export the fused attention), about as long as embedding 300
phone photos. The background exporter (background_export.py) that an index run starts for the text
tower does this one after it, and the first torch-answered query of an outside photo starts it for
this tower alone if the index still has none; the queries after it take the ONNX tower.
$CLIPSEARCH_IMAGE_MODEL=off turns the export off. The folder is written to a temporary name and
renamed into place, so a query sees a whole verified export or none.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.model import background_export, text_tower
from clipsearch.model.identity import Preprocess
from clipsearch.model.image_tower import (
    CHECK_VECTORS,
    FOLDER,
    MIN_COSINE,
    REFERENCE,
    OnnxImageEncoder,
    check_pixels,
    normalise,
    preprocess_record,
    remove,
)

MARKER = background_export.MARKER  # an export under way (its pid)


def enabled() -> bool:
    return background_export.image_enabled()


def export(embedder: Any, index_dir: Path) -> bool:
    """Export and verify the image tower of a loaded Embedder; False when it does not answer like open_clip."""
    import torch

    from clipsearch.model.text_export import fp32_model

    fp32 = fp32_model(embedder, "image")
    pre: Preprocess = embedder.preprocess
    tmp = index_dir / f".{FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sample = torch.from_numpy(normalise(check_pixels(pre)[:3], pre))  # batch 3: 1 could fold to a constant
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes are not for the user's terminal
            torch.onnx.export(fp32.visual, (sample,), str(tmp / "model.onnx"), input_names=["pixels"],
                              output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},),
                              dynamo=True, external_data=True, verbose=False)
            pixels = check_pixels(pre)
            ref = torch.nn.functional.normalize(fp32.encode_image(torch.from_numpy(normalise(pixels, pre))).float(),
                                                dim=-1).numpy()
        del fp32
        meta: dict[str, Any] = {"weights_sha256": embedder.identity.weights_sha256, "model": embedder.identity.name,
                                "preprocess": preprocess_record(pre), "file": "model.onnx", "precision": "fp32"}
        (tmp / "meta.json").write_text(json.dumps(meta))
        meta.update(_preoptimize(tmp, pixels))
        (tmp / "meta.json").write_text(json.dumps(meta))
        got = OnnxImageEncoder(tmp).embed_images(pixels)  # the files a query will load
        meta.update({"verified_min_cosine": float(np.min(np.sum(ref * got, axis=1))), "reference": REFERENCE})
        if meta["verified_min_cosine"] < MIN_COSINE:
            return False
        # open_clip's own vectors of the check pictures: another runtime (openvino_tower.py) is held
        # to them before it answers a query, without loading ONNX Runtime to compare against.
        np.save(tmp / CHECK_VECTORS, ref.astype(np.float32))
        meta["check_vectors"] = CHECK_VECTORS
        graph = str(meta["file"])
        meta["sizes"] = {n: (tmp / n).stat().st_size for n in (graph, f"{graph}.data") if (tmp / n).exists()}
        (tmp / "meta.json").write_text(json.dumps(meta))
        remove(index_dir)
        os.replace(tmp, index_dir / FOLDER)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_built(embedder: Any, index_dir: Path) -> bool:
    """Hold a graph vit_graph.py built without torch to open_clip fp32's own vectors of the check
    pictures; when it answers within MIN_COSINE, record them and the cosine in its folder, which
    makes it an export like export()'s (image_tower.available). False: it does not (export() then
    replaces it), or it belongs to other weights or preprocessing."""
    import torch

    from clipsearch.model.text_export import fp32_model

    folder = index_dir / FOLDER
    encoder = OnnxImageEncoder(folder)
    pre: Preprocess = embedder.preprocess
    if encoder.meta.get("weights_sha256") != embedder.identity.weights_sha256 or encoder.preprocess != pre:
        return False
    pixels = check_pixels(pre)
    with torch.no_grad():
        model = fp32_model(embedder, "image")
        ref = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(normalise(pixels, pre))).float(),
                                            dim=-1).numpy()
    cosine = float(np.min(np.sum(ref * encoder.embed_images(pixels), axis=1)))
    if cosine < MIN_COSINE:
        return False
    np.save(folder / CHECK_VECTORS, ref.astype(np.float32))
    meta = {**encoder.meta, "verified_min_cosine": cosine, "reference": REFERENCE, "check_vectors": CHECK_VECTORS}
    tmp = folder / f".meta.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / "meta.json")  # one rename: a reader sees the unverified meta or the verified one
    return True


def _preoptimize(folder: Path, pixels: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime's EXTENDED graph optimisations saved once, weights in a memory-mapped file beside
    the graph (text_tower.save_optimised, as text_export._preoptimize). Kept only when
    the check pictures stay within cosine 0.9999; loading then takes a fraction of the time."""
    target = folder / "model.opt.onnx"
    text_tower.save_optimised(folder / "model.onnx", target)
    before = OnnxImageEncoder(folder, "model.onnx", preoptimized=False).embed_images(pixels)
    after = OnnxImageEncoder(folder, target.name, preoptimized=True).embed_images(pixels)
    if float(np.min(np.sum(before * after, axis=1))) < 0.9999:
        target.unlink(missing_ok=True)
        (folder / (target.name + ".data")).unlink(missing_ok=True)
        return {}
    (folder / "model.onnx").unlink()
    (folder / "model.onnx.data").unlink(missing_ok=True)
    return {"file": target.name, "preoptimized": True}


def start_in_background(index_dir: Path, model_name: str, weights_sha256: str) -> bool:
    """Start the background exporter (background_export.py) for this tower; False when one runs.

    Detached so the query that starts it answers (and exits) without waiting.
    """
    return background_export.start(index_dir, model_name, weights_sha256, ["image"])
