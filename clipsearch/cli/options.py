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
# As model/embedder.py accepts them (a test checks); checked here, at parsing, because a text query
# never loads the model that would have refused a typo.
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _device(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value.lower() not in DEVICES and not value.lower().startswith("cuda:"):
        raise click.BadParameter(f"{value!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
    return value


device_option = _option("--device", callback=_device,
                        help="auto, cpu, cuda (cuda:N) or mps [default: auto: CUDA, then MPS, then CPU].")
precision_option = _option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False),
                           help="auto, fp32, bf16 or fp16 [default: fp16 on GPU; bf16 on CPUs with bf16 units, "
                           "else fp32].")
json_option = _option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
