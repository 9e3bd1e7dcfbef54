"""A corpus of bad and odd files: each is indexed correctly or skipped with a specific reason."""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from pathlib import Path

import pytest
import shapes
from click.testing import CliRunner
from PIL import Image

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.index.store import Store
from clipsearch.ingest import images

ORIENTATIONS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def _picture() -> Image.Image:
    import numpy as np

    return shapes.render(np.random.default_rng(4), "orange", "triangle", 1, "large").resize((96, 64))


def _corpus(folder: Path) -> tuple[dict[str, str], set[str]]:
    """Writes the corpus; returns (expected skip reason by name, names expected to index)."""
    folder.mkdir()
    pic = _picture()
    pic.save(folder / "good.jpg", quality=90)
    data = (folder / "good.jpg").read_bytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    pic.save(folder / "full.png")
    png = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("not a picture at all\n")
    (folder / "page.png").write_text("<!doctype html><html><body>hello</body></html>")
    # A PNG header that declares 100k x 100k pixels: refused before any pixel is decoded.
    Image.new("L", (1, 1)).save(folder / "tmp.png")
    head = bytearray((folder / "tmp.png").read_bytes())
    head[16:24] = (100_000).to_bytes(4, "big") * 2
    head[29:33] = zlib.crc32(bytes(head[12:29])).to_bytes(4, "big")  # a valid IHDR, so it is believed
    (folder / "bomb.png").write_bytes(bytes(head))
    (folder / "tmp.png").unlink()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one-pixel.png")
    Image.new("RGB", (30_000, 10), (200, 100, 0)).save(folder / "panorama.png")
    (folder / "dir.jpg").mkdir()
    os.symlink(folder / "nowhere.jpg", folder / "broken-link.jpg")
    os.symlink(folder, folder / "loop")
    (folder / os.fsdecode(b"latin-\xe9.jpg")).write_bytes(data)
    (folder / "new\nline name.jpg").write_bytes(data)
    for o, op in ORIENTATIONS.items():
        exif = Image.Exif()
        exif[0x0112] = o
        stored = pic if op is None else pic.transpose(op)
        stored.save(folder / f"orient-{o}.jpg", quality=95, exif=exif)
    skips = {"zero.jpg": "empty file", "truncated.jpg": "corrupt or truncated", "truncated.png": "corrupt or truncated",
             "text.jpg": "not an image", "page.png": "not an image", "bomb.png": "too many pixels"}
    good = {"good.jpg", "full.png", "one-pixel.png", "panorama.png", os.fsdecode(b"latin-\xe9.jpg"),
            "new\nline name.jpg", *(f"orient-{o}.jpg" for o in ORIENTATIONS)}
    return skips, good


def test_every_bad_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    skips, good = _corpus(folder)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}
    result = CliRunner().invoke(app, ["index", str(folder), "--json", "--follow-symlinks"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout)
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    assert {k: v for k, v in reasons.items() if k in skips} == skips
    assert reasons.get("broken-link.jpg") == "broken symlink"
    assert summary["new"] == len(good) and summary["total_indexed"] == len(good)
    assert sum(summary["skipped"].values()) == len(summary["skipped_files"])
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}
    assert before == after  # the originals are never touched


def test_all_eight_orientations_embed_as_the_upright_picture(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    _corpus(folder)
    lib = Library()
    lib.index([folder])
    store = Store.open(lib.path)
    ids = [store.id_for_path(str(folder / f"orient-{o}.jpg")) for o in ORIENTATIONS]
    vecs = store.vectors_of_ids([i for i in ids if i is not None])
    rows = store.images([i for i in ids if i is not None])
    store.close()
    assert len(vecs) == 8
    assert float((vecs @ vecs[0]).min()) > 0.99
    assert {(r.width, r.height) for r in rows.values()} == {(96, 64)}


def test_files_that_vanish_or_grow_while_indexing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "moving"
    folder.mkdir()
    pic = _picture()
    for name in ("vanishing.jpg", "growing.jpg", "steady.jpg"):
        pic.save(folder / name, quality=90)
    real_decode = images.decode

    def racing_decode(path: str, *args: object, **kwargs: object) -> images.Decoded:
        if path.endswith("vanishing.jpg"):
            os.unlink(path)  # deleted between the scan and the decode
        if path.endswith("growing.jpg"):
            with open(path, "ab") as f:  # still being copied in
                f.write(b"\0" * 4096)
        return real_decode(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "decode", racing_decode)
    summary = Library().index([folder])
    reasons = {Path(p).name: r for p, r, _ in summary.skipped_files}
    assert reasons == {"vanishing.jpg": "vanished"}
    assert summary.new == 2  # the growing JPEG still decodes (trailing bytes after the image)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file, whatever its mode")
def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    _picture().save(folder / "secret.jpg")
    (folder / "secret.jpg").chmod(0)
    summary = Library().index([folder])
    assert [r for _, r, _ in summary.skipped_files] == ["unreadable"]


@pytest.mark.parametrize("query", ["\x00\x1b[31mred\x07", "cat " * 5000, "../../etc/passwd", "\ud800 lone surrogate"])
def test_hostile_queries_never_crash(photo_dir: Path, query: str) -> None:
    Library().index([photo_dir])
    result = CliRunner().invoke(app, ["query", query, "-n", "3", "--min-score", "-1"])
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output


def test_an_unexpected_bug_is_one_line_and_a_log(photo_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  isolated: Path) -> None:
    from clipsearch import library

    Library().index([photo_dir])

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(library.Library, "status", broken)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 70
    assert result.stderr.startswith("error: internal error (ZeroDivisionError: a bug)")
    assert len(result.stderr.strip().splitlines()) == 1
    logs = list((isolated / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text()


def test_concurrent_file_threads_do_not_share_state(tmp_path: Path) -> None:
    """Decoding runs in threads: many decodes at once give the same pixels as one at a time."""
    from clipsearch.model.identity import Preprocess

    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    paths = []
    for i in range(16):
        p = tmp_path / f"{i}.jpg"
        _picture().rotate(i * 20).save(p)
        paths.append(str(p))
    serial = [images.decode(p, pre).pixels for p in paths]
    results: dict[int, object] = {}

    def work(i: int) -> None:
        results[i] = images.decode(paths[i], pre).pixels

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((results[i] == serial[i]).all() for i in range(16))  # type: ignore[attr-defined]
