"""JPEG draft decoding: image-vector cosine to a full decode, by size and draft margin (issue 15).

`Image.draft` decodes a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain; clipsearch lets it reduce
only while the decoded image keeps `images.DRAFT_MARGIN` x the model size on both sides. This
measures, for a grid of sizes (just over 2x, 4x and 8x the model size, where a reduction leaves
the least margin, up to 12 MP) and for real photos and high-frequency textures from
scikit-image, the cosine between the image vector of clipsearch's decode at each margin and that
of plain open_clip on the full decode (PIL, exif_transpose, the model's own preprocess), with a
random-initialised ViT-B-32 at fp32. It also times the decode per margin on the 12 MP sizes, as a
ratio to the full decode.

    python bench/bench_draft.py [--quick] [--margins 1,1.5,2,3] [--factors 2,4,8] [--out draft.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

# The short side as a multiple of the model size: just at and just over each power of two, between,
# and a 12 MP camera photo (3000 / 224 = 13.4).
FACTORS = [1.9, 2.0, 2.02, 2.1, 2.4, 3.0, 3.9, 4.0, 4.05, 4.3, 6.0, 8.0, 8.05, 9.0, 13.4]


def sources() -> dict[str, Image.Image]:
    """Real photos (smooth at large sizes: they are upscaled) and textures tiled to keep their detail."""
    from skimage import data

    out = {f"photo-{i}": img for i, img in enumerate(common.source_photos()[:4])}
    for name in ["brick", "grass", "gravel"]:
        arr = getattr(data, name)()
        out[f"texture-{name}"] = Image.fromarray(np.stack([arr] * 3, axis=-1).astype(np.uint8))
    # A colour texture: astronaut's detailed crop, mirrored into a seamless tile.
    ast = Image.fromarray(data.astronaut()).crop((150, 250, 406, 506))
    tile = Image.new("RGB", (512, 512))
    for i, t in enumerate([None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                           Image.Transpose.ROTATE_180]):
        tile.paste(ast if t is None else ast.transpose(t), ((i % 2) * 256, (i // 2) * 256))
    out["texture-astronaut"] = tile
    return out


def make_jpeg(src: Image.Image, name: str, size: tuple[int, int]) -> bytes:
    """A JPEG (quality 90) at `size`: textures tiled at native scale, photos resized to it."""
    if name.startswith("texture"):
        canvas = Image.new("RGB", size)
        for x in range(0, size[0], src.width):
            for y in range(0, size[1], src.height):
                canvas.paste(src, (x, y))
        img = canvas
    else:
        img = src.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--margins", default="1,1.5,2,3")
    ap.add_argument("--factors", default=",".join(map(str, FACTORS)),
                    help="short sides, as multiples of the model size")
    ap.add_argument("--out", default="draft.json")
    args = ap.parse_args()
    import open_clip
    import torch
    from open_clip.transform import image_transform

    from clipsearch.ingest import images
    from clipsearch.model.embedder import _preprocess_from

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    pre = _preprocess_from(model)
    ref_tf = image_transform(pre.size, is_train=False, mean=pre.mean, std=pre.std,
                             resize_mode=pre.resize_mode, interpolation=pre.interpolation)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)

    def embed(batch: list[torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return torch.nn.functional.normalize(model.encode_image(torch.stack(batch)), dim=-1).numpy()

    def ours(pix: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(pix).permute(2, 0, 1).float().div_(255).unsqueeze(0)
        return ((x - mean) / std)[0]

    margins = [float(m) for m in args.margins.split(",")]
    factors = [float(f) for f in args.factors.split(",")]
    factors = factors[::3] if args.quick else factors
    srcs = sources()
    rows: list[dict[str, Any]] = []
    timing: dict[str, list[float]] = {str(m): [] for m in ["full", *margins]}
    tmp = common.CACHE / "draft"
    tmp.mkdir(parents=True, exist_ok=True)
    for f in factors:
        short = round(pre.size * f)
        size = (round(short * 4 / 3), short)
        for name, src in srcs.items():
            path = tmp / f"{name}-{size[0]}x{size[1]}.jpg"
            path.write_bytes(make_jpeg(src, name, size))
            t0 = time.perf_counter()
            with Image.open(path) as im:
                full = ImageOps.exif_transpose(im).convert("RGB")
            if f == 13.4:
                timing["full"].append(time.perf_counter() - t0)
            batch = [ref_tf(full)]
            draft_w = []
            for m in margins:
                images.DRAFT_MARGIN = m
                t0 = time.perf_counter()
                dec = images.decode(str(path), pre)
                if f == 13.4:
                    timing[str(m)].append(time.perf_counter() - t0)
                with Image.open(path) as im:
                    req = int(np.ceil(pre.size * m))
                    scale = min(im.width // req, im.height // req)
                draft_w.append(next((s for s in (8, 4, 2) if scale >= s), 1))
                batch.append(ours(dec.pixels))
            vec = embed(batch)
            cos = vec[1:] @ vec[0]
            rows.append({"source": name, "size": size, "factor": f,
                         **{f"cos@{m}": float(c) for m, c in zip(margins, cos, strict=True)},
                         **{f"reduce@{m}": s for m, s in zip(margins, draft_w, strict=True)}})
            path.unlink()
        worst = {m: min(r[f"cos@{m}"] for r in rows if r["factor"] == f) for m in margins}
        print(f"short {short:5d} ({f:5.2f}x): worst " + "  ".join(f"m{m}: {worst[m]:.5f}" for m in margins),
              flush=True)
    images.DRAFT_MARGIN = 1.0
    summary = {}
    for m in margins:
        cs = [r[f"cos@{m}"] for r in rows]
        tex = [r[f"cos@{m}"] for r in rows if r["source"].startswith("texture")]
        summary[str(m)] = {"worst": min(cs), "worst_texture": min(tex),
                           "worst_photo": min(r[f"cos@{m}"] for r in rows if r["source"].startswith("photo")),
                           "median": float(np.median(cs)),
                           "decode_12mp_vs_full": (float(np.median(timing[str(m)]) / np.median(timing["full"]))
                                                   if timing["full"] else None)}
        print(f"margin {m}: worst {min(cs):.5f} (textures {min(tex):.5f}), median {np.median(cs):.6f}, "
              f"12 MP decode {summary[str(m)]['decode_12mp_vs_full'] or float('nan'):.2f}x full", flush=True)
    common.RESULTS.mkdir(exist_ok=True)
    out = common.RESULTS / ("draft-quick.json" if args.quick else args.out)
    out.write_text(json.dumps({"machine": common.machine(), "model_size": pre.size, "summary": summary,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
