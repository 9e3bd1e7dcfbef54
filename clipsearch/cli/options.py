"""The options many commands share, declared once so that their names and help never drift."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

PATH = click.Path(path_type=Path)


def _option(*names: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*names, show_default=kwargs.pop("show_default", False), **kwargs)


index_option = _option("--index", "index_path", type=PATH,
                       help="Index folder [default: $CLIPSEARCH_HOME/index or the platform data dir].")
model_option = _option("--model", "-m", "model",
                       help="Model as ARCH:PRETRAINED, local-dir:/path or CONFIG.json:CHECKPOINT [default: "
                       "$CLIPSEARCH_MODEL, else the index's model, else ViT-B-32-256:datacomp_s34b_b86k].")
device_option = _option("--device", help="auto, cpu, cuda or mps [default: auto: CUDA, then MPS, then CPU].")
precision_option = _option("--precision", help="auto, fp32, bf16 or fp16 [default: fp16 on GPU; bf16 on CPUs "
                           "with bf16 units, else fp32].")
json_option = _option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
