"""The files rclip 3.3.0 would download, built offline from the same random weights clipsearch gets.

rclip 3.3.0 (`rclip/model_download.py`) looks for, under its data directory ($RCLIP_DATADIR):

    ViT-B-32-256-datacomp_s34b_b86k/visual.onnx    input "input"  float32 [batch, 3, 256, 256] -> "output" [batch, 512]
    ViT-B-32-256-datacomp_s34b_b86k/textual.onnx   input "input"  int64   [batch, 77]           -> "output" [batch, 512]
    tokenizer/bpe_simple_vocab_16e6.txt.gz         open_clip's BPE vocabulary

and downloads them from the Hugging Face repo yurijmikhalevich/rclip-models only when a file is
missing (`os.path.isfile` first), so with all three in place it never touches the network. They are
exported here the way rclip's own scripts/convert_model.py does it (open_clip's `model.visual` and
`encode_text` wrapped, torch.onnx.export with the TorchScript exporter, opset 18, dynamic batch,
fp32) and checked against torch as that script checks them (max abs difference < 1e-4).

The weights are bench/common.random_model("ViT-B-32-256"): open_clip's architecture with random
weights drawn after torch.manual_seed(0), saved as a local-dir folder, which clipsearch loads as
`--model local-dir:FOLDER`. Both tools therefore run the very same numbers.

    python bench/rclip_setup.py OUT_DIR     # export into OUT_DIR (what bench_rclip.py calls)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common

ARCH = "ViT-B-32-256"
MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip 3.3.0's model_download.MODEL_SUBDIR
VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
FILES = (f"{MODEL_SUBDIR}/visual.onnx", f"{MODEL_SUBDIR}/textual.onnx", VOCAB)
IMAGE_SIZE, CONTEXT_LENGTH = 256, 77


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def rclip_files(template: Path) -> tuple[Path, dict[str, Any]]:
    """(the local-dir model for clipsearch, the export record); exports into `template` when stale.

    The export runs in a child process so that this one, which goes on to time both tools, never
    holds torch.
    """
    model_dir = common.random_model(ARCH)
    weights = sha256(model_dir / "open_clip_model.safetensors")
    record_path = template / "export.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("weights_sha256") == weights and all((template / f).is_file() for f in FILES):
            return model_dir, record
    shutil.rmtree(template, ignore_errors=True)
    import subprocess

    subprocess.run([sys.executable, __file__, str(template)], check=True)
    return model_dir, json.loads(record_path.read_text())


def export(template: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import open_clip
    import torch
    from safetensors.torch import load_file

    model_dir = common.random_model(ARCH)
    model = open_clip.create_model(ARCH, pretrained=None)
    model.load_state_dict(load_file(str(model_dir / "open_clip_model.safetensors")))
    model.eval()

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    class Textual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip_model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.clip_model.encode_text(x)

    out = template / MODEL_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    # Exported with autograd on, as rclip's converter does: under no_grad, nn.MultiheadAttention takes
    # its fused fast path (aten::_native_multi_head_attention), which the TorchScript exporter lacks.
    torch.onnx.export(Visual().eval(), (torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE),), str(out / "visual.onnx"),
                      input_names=["input"], output_names=["output"], dynamic_axes=axes, opset_version=18,
                      dynamo=False)
    torch.onnx.export(Textual().eval(), (torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long),),
                      str(out / "textual.onnx"), input_names=["input"], output_names=["output"],
                      dynamic_axes=axes, opset_version=18, dynamo=False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        tokens = torch.from_numpy(np.asarray(open_clip.get_tokenizer(ARCH)(["a dog", "a photo of the sea"])))
        want_v, want_t = model.visual(pixels).numpy(), model.encode_text(tokens).numpy()
    diffs = {}
    for name, x, want in (("visual", pixels.numpy(), want_v), ("textual", tokens.numpy(), want_t)):
        session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"input": x})
        diffs[name] = float(np.max(np.abs(got - want)))
        if diffs[name] >= 1e-4:  # rclip's own converter refuses the same
            raise SystemExit(f"{name}.onnx differs from torch by {diffs[name]:.2e}")
    (template / VOCAB).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(open_clip.tokenizer.default_bpe()), template / VOCAB)
    record = {"weights_sha256": sha256(model_dir / "open_clip_model.safetensors"), "arch": ARCH,
              "seed": "torch.manual_seed(0) before open_clip.create_model (bench/common.random_model)",
              "exporter": "torch.onnx.export(dynamo=False), opset 18, fp32, dynamic batch",
              "max_abs_diff_vs_torch": diffs, "torch": torch.__version__, "open_clip": open_clip.__version__,
              "sizes_mb": {f: round((template / f).stat().st_size / 2**20, 1) for f in FILES}}
    (template / "export.json").write_text(json.dumps(record, indent=2) + "\n")


def link_datadir(template: Path, datadir: Path) -> None:
    """A fresh rclip data directory with the model files linked in (no copy of 0.6 GB per run)."""
    for name in FILES:
        (datadir / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(template / name, datadir / name)


if __name__ == "__main__":
    export(Path(sys.argv[1]))
