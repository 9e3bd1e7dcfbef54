"""Duplicates in tiers: exact copies, near copies (resized, re-encoded), similar shots; what to keep."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import shapes
from click.testing import CliRunner
from PIL import Image

from clipsearch import Library
from clipsearch.cli import app
from clipsearch.index.records import ImageRecord
from clipsearch.search.duplicates import dhash, keep_first

runner = CliRunner()


def _scene(seed: int, color: str, shape: str) -> Image.Image:
    return shapes.render(np.random.default_rng(seed), color, shape, 2, "large").resize((256, 256))


def _library(tmp_path: Path) -> Path:
    """An original, its byte copy, a resized re-encoded copy, and scenes that are only alike."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    (folder / "backup").mkdir()
    original = _scene(1, "red", "star")
    original.save(folder / "trip" / "star.png")
    shutil.copy(folder / "trip" / "star.png", folder / "backup" / "star copy.png")
    original.resize((128, 128)).save(folder / "trip" / "star-small.jpg", quality=85)
    _scene(2, "blue", "square").save(folder / "trip" / "square.png")
    _scene(3, "red", "star").save(folder / "trip" / "another red star.png")  # same subject, another shot
    for seed, (c, s) in enumerate([("green", "ring"), ("yellow", "cross"), ("white", "triangle")], start=10):
        _scene(seed, c, s).save(folder / "trip" / f"{c}-{s}.png")
    return folder


def test_tiers_are_kept_apart(tmp_path: Path) -> None:
    folder = _library(tmp_path)
    lib = Library()
    lib.index([folder])
    groups = lib.duplicates()
    by_tier = {g.tier: sorted(Path(m.path).name for m in g.members) for g in groups}
    assert by_tier["exact"] == ["star copy.png", "star.png"]
    # The resized JPEG is near, not exact; the exact pair is represented by its kept copy.
    assert sorted(by_tier["near"]) == ["star-small.jpg", "star.png"]
    assert len(groups) == 2  # another red star and the other scenes are not copies of anything
    near = next(g for g in groups if g.tier == "near")
    assert Path(near.keep.path).name == "star.png"  # larger resolution wins
    exact = next(g for g in groups if g.tier == "exact")
    assert Path(exact.keep.path).name == "star.png"  # same size and age: the shorter path


def test_scope_limits_the_search(tmp_path: Path) -> None:
    folder = _library(tmp_path)
    lib = Library()
    lib.index([folder])
    assert [g.tier for g in lib.duplicates([folder / "trip"])] == ["near"]


def test_keep_rule_prefers_pixels_then_age_then_short_paths() -> None:
    def row(i: int, path: str, w: int, taken: str | None) -> ImageRecord:
        return ImageRecord(path, 1, 1_000_000_000 * i, "", w, w, "jpeg", taken, id=i)

    assert keep_first([row(1, "/a/x.jpg", 100, None), row(2, "/a/y.jpg", 200, None)]).id == 2
    older = row(3, "/a/long/name.jpg", 100, "2010-01-01T00:00:00")
    assert keep_first([row(4, "/a/z.jpg", 100, "2015-01-01T00:00:00"), older]).id == 3
    assert keep_first([row(5, "/a/long.jpg", 100, None), row(5, "/a/s.jpg", 100, None)]).path == "/a/s.jpg"


def test_dhash_tells_resized_copies_from_other_scenes(tmp_path: Path) -> None:
    a = _scene(1, "red", "star")
    a.save(tmp_path / "a.png")
    a.resize((100, 100)).save(tmp_path / "a-small.jpg", quality=80)
    _scene(3, "red", "star").save(tmp_path / "b.png")
    ha, hs, hb = (dhash(str(tmp_path / n)) for n in ("a.png", "a-small.jpg", "b.png"))
    assert ha is not None and hs is not None and hb is not None
    assert bin(ha ^ hs).count("1") <= 6 < bin(ha ^ hb).count("1")


def test_cli_outputs_and_exit_codes(tmp_path: Path) -> None:
    folder = _library(tmp_path)
    Library().index([folder])
    table = runner.invoke(app, ["duplicates"])
    assert table.exit_code == 0 and "keep" in table.stdout and "exact" in table.stdout
    assert "Nothing was deleted" in table.stderr
    payload = json.loads(runner.invoke(app, ["duplicates", "--json"]).stdout)
    assert [g["tier"] for g in payload["groups"]] == ["exact", "near"]
    assert all(sum(m["keep"] for m in g["members"]) == 1 for g in payload["groups"])
    removable = runner.invoke(app, ["duplicates", "--paths-to-remove", "-0"]).stdout.split("\0")[:-1]
    assert sorted(os.path.basename(p) for p in removable) == ["star copy.png", "star-small.jpg"]
    sheet = tmp_path / "dups.html"
    runner.invoke(app, ["duplicates", "--html", str(sheet)])
    assert sheet.read_text().count("<figure") == 4 and sheet.read_text().count('class="keep"') == 2
    assert all(p.exists() for p in folder.rglob("*.png"))  # nothing deleted
    none = runner.invoke(app, ["duplicates", str(folder / "backup")])
    assert none.exit_code == 1 and "no duplicates" in none.stderr


def test_similar_is_a_separate_opt_in_tier(tmp_path: Path) -> None:
    folder = _library(tmp_path)
    lib = Library()
    lib.index([folder])
    groups = lib.duplicates(similar=True, similar_cosine=0.8)
    similar = [sorted(Path(m.path).name for m in g.members) for g in groups if g.tier == "similar"]
    assert ["another red star.png", "star.png"] in similar
    in_tiers = [Path(m.path).name for g in groups for m in g.members if m.id != g.keep.id]
    assert len(in_tiers) == len(set(in_tiers))  # no photo is a copy in two tiers
