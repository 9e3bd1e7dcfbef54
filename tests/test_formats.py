"""Every photo format Pillow (and the heif extra) can write here indexes, and means the same picture."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapes
from PIL import Image

from clipsearch import Library
from clipsearch.index.store import Store
from clipsearch.ingest import images
from clipsearch.model.embedder import Embedder

FORMATS = {"jpg": {"quality": 95}, "png": {}, "webp": {"quality": 95}, "tif": {}, "gif": {}, "bmp": {},
           "avif": {"quality": 90}, "jp2": {}, "ppm": {}, "heic": {"quality": 90}}


def _source(heldout: list, color: str = "blue", shape: str = "star") -> Image.Image:
    path = next(p for p, c, s in heldout if (c, s) == (color, shape))
    return Image.open(path).convert("RGB").resize((128, 128), Image.Resampling.BICUBIC)


def _vectors(lib: Library, paths: list[Path]) -> dict[str, np.ndarray]:
    store = Store.open(lib.path)
    try:
        ids = {p.name: store.id_for_path(str(p)) for p in paths}
        missing = [n for n, i in ids.items() if i is None]
        assert not missing, f"not indexed: {missing}"
        return dict(zip(ids, store.vectors_of_ids(list(ids.values())), strict=True))
    finally:
        store.close()


def test_every_format_indexes_as_the_same_picture(tmp_path: Path, heldout: list, tiny_embedder: Embedder) -> None:
    if images.heif_available():
        import pillow_heif

        pillow_heif.register_heif_opener()
    src = _source(heldout)
    folder = tmp_path / "formats"
    folder.mkdir()
    written = []
    for ext, options in FORMATS.items():
        if ext == "heic" and not images.heif_available():
            continue
        path = folder / f"photo.{ext}"
        src.save(path, **options)
        written.append(path)
    lib = Library()
    summary = lib.index([folder])
    assert summary.new == len(written) and not summary.skipped, summary.skipped_files
    vecs = _vectors(lib, written)
    text = tiny_embedder.embed_texts([p for _, _, p in shapes.class_prompts()])
    labels = [(c, s) for c, s, _ in shapes.class_prompts()]
    for name, vec in vecs.items():
        assert float(vec @ vecs["photo.png"]) > 0.9, name
        assert labels[int(np.argmax(text @ vec))] == ("blue", "star"), f"{name} no longer looks like a blue star"


def test_heic_without_the_extra_is_skipped_with_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    monkeypatch.setattr(images, "heif_available", lambda: False)
    summary = Library().index([folder])
    assert [(r, d) for _, r, d in summary.skipped_files] == [("needs the heif extra", "pip install 'clipsearch[heif]'")]


def test_odd_pixel_layouts(tmp_path: Path, heldout: list) -> None:
    src = _source(heldout, "green", "circle")
    folder = tmp_path / "modes"
    folder.mkdir()
    src.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(src.convert("L"), dtype=np.uint16) * 257).save(folder / "deep16.png")
    rgba = src.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "alpha.png")
    src.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    frames = [src, Image.new("RGB", src.size, (0, 0, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:], duration=100)
    Image.new("RGB", (1, 1), (10, 200, 10)).save(folder / "tiny.png")
    Image.new("RGB", (3000, 10), (10, 200, 10)).save(folder / "panorama.png")
    src.save(folder / "ref.png")
    lib = Library()
    summary = lib.index([folder])
    assert summary.new == 9 and not summary.skipped, summary.skipped_files
    vecs = _vectors(lib, sorted(folder.iterdir()))
    for name in ("cmyk.jpg", "alpha.png", "palette.png", "anim.gif", "anim.webp"):
        assert float(vecs[name] @ vecs["ref.png"]) > 0.85, name  # the first frame, colours intact


def test_exif_capture_time_offset_and_gps_are_recorded(tmp_path: Path, heldout: list) -> None:
    exif = Image.Exif()
    exif[0x0132] = "2020:01:01 00:00:00"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2019:07:14 18:30:05"
    sub[0x9011] = "+02:00"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.6), "E", (2.0, 17.0, 40.2)
    folder = tmp_path / "exif"
    folder.mkdir()
    _source(heldout).save(folder / "paris.jpg", exif=exif, quality=90)
    lib = Library()
    lib.index([folder])
    (hit,) = lib.search("a photo of a blue star", top=1)
    assert hit.taken_at == "2019-07-14T18:30:05+02:00"
    assert dt.datetime.fromisoformat(hit.taken_at).utcoffset() == dt.timedelta(hours=2)
    store = Store.open(lib.path)
    row = store.images([hit.id])[hit.id]
    store.close()
    assert row.lat == pytest.approx(48.858222, abs=1e-5) and row.lon == pytest.approx(2.294500, abs=1e-5)
    assert (row.width, row.height, row.format) == (128, 128, "jpeg")


def test_corrupt_exif_still_indexes_the_picture(tmp_path: Path, heldout: list) -> None:
    folder = tmp_path / "badexif"
    folder.mkdir()
    path = folder / "x.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _source(heldout).save(path, exif=exif)
    data = bytearray(path.read_bytes())
    at = data.find(b"Exif\0\0")
    data[at + 10:at + 30] = b"\xff" * 20  # scramble the IFD right after the TIFF header
    path.write_bytes(bytes(data))
    summary = Library().index([folder])
    assert summary.new == 1 and not summary.skipped


def test_rebuild_switches_the_model(tmp_path: Path, photo_dir: Path) -> None:
    from conftest import TINY_MODEL_DIR

    from clipsearch.errors import ModelMismatchError

    Library().index([photo_dir])
    copy = tmp_path / "tiny-copy"
    shutil.copytree(TINY_MODEL_DIR, copy)
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        Library(model=f"local-dir:{copy}").index([photo_dir])
    summary = Library(model=f"local-dir:{copy}").index([photo_dir], rebuild=True)
    assert summary.new == 48 and summary.embedded == 48
    assert Library(model=f"local-dir:{copy}").status().model.name == f"local-dir:{copy}"  # type: ignore[union-attr]
    assert os.path.exists(copy)
