"""Exporting a model's image tower to ONNX, verified against open_clip at fp32 (torch side).

image_tower.py runs the result, so `query --image` of a photo that is not indexed needs no torch.

When: not during `index`. ViT-B-32's export took 15.6 s on 2 cores (torch.onnx's dynamo exporter;
the TorchScript one cannot export the fused attention), about as long as embedding 300 phone
photos, and most indexes never see an image query of an outside photo. So the first such query,
which loads torch anyway for its own answer, starts the export in a detached low-priority process
(`start_in_background`) and answers from torch; the queries after it take the ONNX tower.
$CLIPSEARCH_IMAGE_MODEL=off turns the export off. The folder is written to a temporary name and
renamed into place, so a query sees a whole verified export or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

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

MARKER = ".image-model.exporting"  # an export under way (its pid); a stale one (> STALE_S) is ignored
STALE_S = 900.0


def enabled() -> bool:
    return os.environ.get("CLIPSEARCH_IMAGE_MODEL", "on").strip().lower() not in ("0", "off", "no", "false")


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


def _preoptimize(folder: Path, pixels: np.ndarray) -> dict[str, Any]:
    """ONNX Runtime's EXTENDED graph optimisations saved once, weights in a memory-mapped file beside
    the graph (as text_export._preoptimize; ALL would bake in this CPU's layouts). Kept only when
    the check pictures stay within cosine 0.9999; loading then takes a fraction of the time."""
    import onnxruntime as ort

    target = folder / "model.opt.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
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
    """Start `python -m clipsearch.model.image_export` detached (niced, silent); False when one runs.

    Detached so the query that starts it answers (and exits) without waiting; the marker keeps two
    queries from exporting at once.
    """
    marker = index_dir / MARKER
    try:
        if time.time() - marker.stat().st_mtime < STALE_S:
            return False
        marker.unlink()
    except OSError:
        pass
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError:
        return False  # another query won the race, or the folder is read-only
    os.close(fd)
    try:
        subprocess.Popen([sys.executable, "-m", "clipsearch.model.image_export", str(index_dir), model_name,
                          weights_sha256], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        marker.unlink(missing_ok=True)
        return False
    return True


def _main(index_dir: Path, model_name: str, weights_sha256: str) -> int:
    """The background export: the index's model from this machine (never a download), fp32 on the CPU."""
    from clipsearch.model import names
    from clipsearch.model.embedder import Embedder

    with contextlib.suppress(OSError):
        os.nice(10)  # behind whatever the user runs next
    try:
        emb = Embedder(names.parse(model_name), "cpu", "fp32", download=False)
        if emb.identity.weights_sha256 != weights_sha256:
            return 1
        return 0 if export(emb, index_dir) else 1
    except Exception:  # noqa: BLE001 - a failed export only costs speed: queries keep the torch path
        remove(index_dir)
        return 1
    finally:
        (index_dir / MARKER).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
