"""open_clip's ViT image tower rebuilt with plain torch modules, for index runs: no open_clip.

An index run of many photos on a CPU without OpenVINO embeds with torch bf16 (the exported tower
on ONNX Runtime fp32 is slower per photo there: onnx_indexing.CROSSOVER). Through the Embedder
that run peaked at ~1.2 GB, and a quarter of it was imports it never used: open_clip imports
torchvision, which imports torch._dynamo (with sympy and triton: ~150 MB resident), timm and
open_clip itself (~90 MB more), only so that `create_model` can build the skeleton
(docs/benchmarks.md, "Index runs without OpenVINO"). For the towers vit_config.py accepts (exactly
open_clip's `VisionTransformer` with the options vit_graph.py implements, its keys and shapes
checked against the safetensors header), this module builds the same tower from torch's own
modules as open_clip 3.3.0's transformer.py composes them: nn.Conv2d patch embedding, class
token, positions, LayerNorm cast back to the input's dtype, blocks of nn.MultiheadAttention
(batch_first) and Linear-GELU-Linear with optional LayerScale, tok or avg pooling, ln_post, proj.
The same modules in the same order run the same kernels, so its vectors are open_clip's
(tests/test_vit_torch.py compares them, fp32 and bf16, on every variant vit_graph is tested on).

It is built on the meta device and given the image tower's tensors as lean_load reads them (one
at a time, cast to the run's precision): the text tower is never read. Anything else an index run
might need of the model (the text tower for an inline export, a later image query) loads the
Embedder as before; this class only embeds pixels (onnx_indexing.ImageEmbedder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.model import lean_load
from clipsearch.model.identity import ModelIdentity
from clipsearch.model.vit_config import VitTower

if TYPE_CHECKING:
    import torch


def _modules(t: VitTower) -> Any:
    """The tower as an nn.Module whose state-dict keys are the file's `visual.*` ones, unprefixed."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's own spelling
    from torch import nn

    class LayerNorm(nn.LayerNorm):  # open_clip's: the result cast back to the input's dtype
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)

    class QuickGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class LayerScale(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.empty(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma

    def norm() -> nn.Module:
        return LayerNorm(t.width, eps=t.eps)

    class Block(nn.Module):  # open_clip's ResidualAttentionBlock
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = norm()
            self.attn = nn.MultiheadAttention(t.width, t.heads, batch_first=True)
            self.ls_1 = LayerScale(t.width) if t.layer_scale else nn.Identity()
            self.ln_2 = norm()
            self.mlp = nn.Sequential()
            self.mlp.add_module("c_fc", nn.Linear(t.width, t.mlp_width))
            self.mlp.add_module("gelu", QuickGELU() if t.quick_gelu else nn.GELU())
            self.mlp.add_module("c_proj", nn.Linear(t.mlp_width, t.width))
            self.ls_2 = LayerScale(t.width) if t.layer_scale else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln_1(x)
            x = x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=None)[0])
            return x + self.ls_2(self.mlp(self.ln_2(x)))

    class Tower(nn.Module):  # open_clip's VisionTransformer.forward in eval mode, no dropout
        def __init__(self) -> None:
            super().__init__()
            grid = t.image_size // t.patch
            self.conv1 = nn.Conv2d(3, t.width, kernel_size=t.patch, stride=t.patch, bias=False)
            self.class_embedding = nn.Parameter(torch.empty(t.width))
            self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, t.width))
            self.ln_pre = norm() if t.ln_pre else nn.Identity()
            self.transformer = nn.Module()  # open_clip's key names: transformer.resblocks.N.*
            self.transformer.resblocks = nn.ModuleList([Block() for _ in range(t.layers)])
            self.ln_post = norm()
            self.proj = nn.Parameter(torch.empty(t.width, t.embed_dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv1(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
            x = self.ln_pre(x)
            for block in self.transformer.resblocks:  # type: ignore[union-attr]
                x = block(x)
            if t.ln_after_pool:
                pooled = self.ln_post(x[:, 1:].mean(dim=1) if t.pool == "avg" else x[:, 0])
            else:
                x = self.ln_post(x)
                pooled = x[:, 1:].mean(dim=1) if t.pool == "avg" else x[:, 0]
            return pooled @ self.proj

    return Tower()


def build(t: VitTower, state: dict[str, torch.Tensor]) -> Any:
    """The tower given `state`'s `visual.*` tensors (lean_load.read's, in the run's precision), in eval mode."""
    import torch

    with torch.device("meta"):
        tower = _modules(t)
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    tower.load_state_dict(visual, strict=True, assign=True)  # every key, and no other: as vit_config checked
    return tower.eval()


class TorchVitEmbedder:
    """An index run's embedder (onnx_indexing.ImageEmbedder): the rebuilt tower on torch, on the CPU.

    Precision as the Embedder picks it (bf16 where the CPU has native bf16, else fp32); identity,
    preprocessing and logit scale as the Embedder would record them for the same weights.
    """

    device = "cpu"

    def __init__(self, t: VitTower, precision: str) -> None:
        from clipsearch.model import embedder

        embedder._load_torch()  # OpenMP's passive wait, as the Embedder imports torch (it says why)

        self.precision = precision
        self.dtype = embedder.dtype_of(precision)
        self.runtime = f"torch {precision}"
        self.unchecked: str | None = None  # open_clip's own modules and weights: nothing to check (onnx_indexing.py)
        self.identity: ModelIdentity = t.identity()
        self.preprocess = t.preprocess
        state = lean_load.read(t.weights, (lean_load.IMAGE,), self.dtype)  # the image tower and the scalars
        self.model = build(t, state)
        # The Embedder's reading of the temperature and bias: the scalar in the run's precision, exp'd.
        self.logit_scale = float(state["logit_scale"].exp().item())
        bias = state.get("logit_bias")
        self.logit_bias = float(bias.float().reshape(-1)[0].item()) if bias is not None else None

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, size, size, 3) from images.decode -> (N, dim) normalised float32."""
        import torch

        from clipsearch.model import embedder

        with torch.inference_mode():
            x = embedder.pixel_tensor(pixels, self.preprocess, self.device, self.dtype)
            return embedder.normalised(self.model(x))
