"""Videos: indexed by their moments, found with a time, incremental, skipped with reasons.

The clips are generated with PyAV (fixtures/videos.py): 3 s of a red circle, then 3 s of a blue
square, stored plain, rotated by the display matrix (as phones record), and with an audio track.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import videos
from click.testing import CliRunner

from clipsearch.cli import app

pytest.importorskip("av")
runner = CliRunner()
RED_THEN_BLUE = [("red", "circle", 3.0), ("blue", "square", 3.0)]


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    videos.write_clip(folder / "plain.mp4", RED_THEN_BLUE, seed=1)
    videos.write_clip(folder / "turned.mov", RED_THEN_BLUE, rotate=90, seed=2)
    videos.write_clip(folder / "sound.mkv", RED_THEN_BLUE, audio=True, seed=3)
    return folder


def _index(*args: str) -> str:
    result = runner.invoke(app, ["index", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _query(*args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["query", *args, "--json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)["results"] if result.exit_code == 0 else []


@pytest.fixture
def library(clips: Path, tmp_path: Path, photo_dir: Path) -> Path:
    """The clips beside the 48 held-out photos, indexed."""
    shutil.copytree(clips, photo_dir / "clips")
    out = _index(str(photo_dir))
    assert "3 videos indexed" in out, out
    return photo_dir


def test_a_query_answers_each_video_once_at_the_moment_it_shows(library: Path) -> None:
    for text, (lo, hi) in (("a blue square", (3.0, 6.0)), ("a red circle", (0.0, 3.0))):
        results = _query(text, "--type", "video")
        names = [Path(str(r["path"])).name for r in results]
        assert sorted(names) == ["plain.mp4", "sound.mkv", "turned.mov"], (text, names)  # once each
        for r in results:
            assert r["type"] == "video" and lo <= float(str(r["time"])) < hi, (text, r)
            assert isinstance(r["moments"], list)
    photos = _query("a blue square", "--type", "photo")
    assert photos and all(r["type"] == "photo" for r in photos)


def test_moments_lists_every_matching_moment_and_paths_print_the_file(library: Path) -> None:
    every = _query("a blue square", "--type", "video", "--moments", "--min-score", "-1")
    per_video: dict[str, list[float]] = {}
    for r in every:
        per_video.setdefault(str(r["path"]), []).append(float(str(r["time"])))
    assert all(len(times) >= 2 for times in per_video.values()), per_video  # both segments were kept
    out = runner.invoke(app, ["query", "a blue square", "--type", "video", "--format", "paths"])
    assert out.exit_code == 0
    assert sorted(Path(line).name for line in out.stdout.splitlines()) == ["plain.mp4", "sound.mkv", "turned.mov"]


def test_contact_sheet_links_the_moment_and_similar_starts_from_one(library: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.html"
    out = runner.invoke(app, ["query", "a blue square", "--type", "video", "--html", str(sheet)])
    assert out.exit_code == 0, out.output
    page = sheet.read_text()
    assert "plain.mp4#t=3." in page and "no preview" not in page  # the frame was decoded again for it
    clip = library / "clips" / "plain.mp4"
    like = runner.invoke(app, ["similar", f"{clip}#t=4", "--json", "--min-score", "0.5"])
    assert like.exit_code == 0, like.output
    best = json.loads(like.stdout)["results"][0]
    # Other clips at their blue-square moments come first, not the red circle of the same clip.
    assert best["type"] == "video" and float(best["time"]) >= 3.0, best


def test_status_counts_files_and_forget_takes_a_videos_moments(library: Path) -> None:
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st["images"] == 48 + 3 and st["videos"] == 3 and st["video_frames"] >= 6
    gone = runner.invoke(app, ["forget", str(library / "clips" / "plain.mp4")])
    assert gone.exit_code == 0, gone.output
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st["images"] == 50 and st["videos"] == 2
    assert all(Path(str(r["path"])).name != "plain.mp4" for r in _query("a blue square", "--moments"))


def test_unchanged_videos_are_not_decoded_again_and_moved_ones_keep_their_frames(
        clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "lib"
    shutil.copytree(clips, folder)
    _index(str(folder))
    from clipsearch.ingest import videos as decoder

    def no_decoding(*_: object) -> None:
        raise AssertionError("an unchanged or moved video was decoded again")

    monkeypatch.setattr(decoder, "sample", no_decoding)
    assert "3 unchanged" in _index(str(folder))
    (folder / "moved").mkdir()
    (folder / "plain.mp4").rename(folder / "moved" / "plain.mp4")
    assert "1 moved" in _index(str(folder))
    blue = {Path(str(r["path"])).name: r for r in _query("a blue square")}
    assert "plain.mp4" in blue and 3.0 <= float(str(blue["plain.mp4"]["time"])) < 6.0
    assert str(blue["plain.mp4"]["path"]).endswith("moved/plain.mp4")
    db = sqlite3.connect(Path(str(tmp_path / "clipsearch-home" / "index" / "clipsearch.db")))
    paths = [p for (p,) in db.execute("SELECT path FROM images WHERE video_id IS NOT NULL")]
    assert paths and all("/moved/plain.mp4#t=" in p for p in paths if "plain" in p)


def test_a_truncated_video_is_skipped_and_a_half_readable_one_keeps_its_frames(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    whole = videos.write_clip(tmp_path / "whole.mp4", RED_THEN_BLUE)
    (folder / "cut.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # no index at the end
    first = videos.write_clip(tmp_path / "first.mp4", RED_THEN_BLUE, faststart=True)
    (folder / "half.mp4").write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    out = _index(str(folder))
    assert "1 skipped" in out and "corrupt or truncated" in out, out
    assert "Partly decoded" in out and "half.mp4" in out, out
    skipped = runner.invoke(app, ["status", "--show-skipped"]).stdout
    assert "cut.mp4" in skipped
    red = _query("a red circle", "--type", "video")
    assert [Path(str(r["path"])).name for r in red] == ["half.mp4"]


def test_without_pyav_videos_are_skipped_with_one_clear_note(clips: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             photo_dir: Path) -> None:
    from clipsearch.ingest import videos as decoder

    monkeypatch.setattr(decoder, "available", lambda: False)
    shutil.copytree(clips, photo_dir / "clips")
    out = _index(str(photo_dir))
    assert "48 new" in out and "3 videos skipped: no video decoder" in out and "clipsearch[video]" in out, out
    assert out.count("pip install") == 1


def test_ray_carries_a_videos_frames_back_to_the_driver(clips: Path, tiny_embedder: object) -> None:
    from clipsearch.ingest import local_executor, ray_executor, scan

    clip = clips / "plain.mp4"
    files = [scan.FoundFile(str(clip), clip.stat().st_size, clip.stat().st_mtime_ns)]
    results = list(local_executor.embed_files(files, tiny_embedder, 10**8))  # type: ignore[arg-type]
    batch = ray_executor.encode(results, np.arange(1), 64)
    (_, back), = ray_executor.decode(batch, files)
    assert results[0].video is not None and back.video is not None
    assert back.video.times == results[0].video.times and len(back.video.times) >= 2
    np.testing.assert_allclose(back.video.vectors, results[0].video.vectors, atol=1e-6)


def test_a_videos_frames_tag_the_video_and_duplicates_compare_files_not_moments(library: Path) -> None:
    from clipsearch.tags.workflow import fold_frames

    ids, tags = fold_frames([1, 2, 3, 9], [[("red", 0.3)], [("blue", 0.4), ("red", 0.2)], [("cat", 0.5)], []],
                            {2: 1, 9: 7})
    assert ids == [1, 3] and tags == [[("blue", 0.4), ("red", 0.3)], [("cat", 0.5)]]
    dupes = runner.invoke(app, ["duplicates", "--similar", "--json"])
    assert dupes.exit_code in (0, 1), dupes.output
    assert "#t=" not in dupes.stdout


def test_the_display_matrix_is_applied_so_frames_are_embedded_upright(tmp_path: Path, tiny_embedder: object) -> None:
    from clipsearch.ingest import videos as decoder

    segments = [("white", "triangle", 1.0)]
    plain = videos.write_clip(tmp_path / "plain.mp4", segments, size=(64, 64), seed=7)
    turned = videos.write_clip(tmp_path / "turned.mp4", segments, size=(64, 64), seed=7, rotate=90)
    pre = tiny_embedder.preprocess  # type: ignore[attr-defined]
    meta = decoder._Meta()
    a = next(iter(decoder.sample(str(plain), pre, decoder._Meta())))[1].astype(float)
    b = next(iter(decoder.sample(str(turned), pre, meta)))[1].astype(float)
    assert meta.rotation == 90
    diffs = [float(np.abs(np.rot90(a, k) - b).mean()) for k in range(4)]
    assert int(np.argmin(diffs)) == 0, diffs  # upright as recorded, not as stored


def test_pyav_is_imported_only_when_a_video_is_seen(photo_dir: Path, isolated: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom clipsearch import Library\nLibrary().index([sys.argv[1]])\n"
            "assert 'av' not in sys.modules, 'PyAV was imported for photos'")
    result = subprocess.run([sys.executable, "-c", code, str(photo_dir)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "CLIPSEARCH_HOME": str(isolated)})
    assert result.returncode == 0, result.stderr


def test_the_gallery_shows_a_moments_frame_and_serves_only_the_indexed_video(library: Path) -> None:
    from conftest import TINY_MODEL
    from starlette.testclient import TestClient

    from clipsearch.serve import Gallery, create_app
    from clipsearch.serve.security import COOKIE

    index = Path(str(json.loads(runner.invoke(app, ["status", "--json"]).stdout)["index"]))
    g = Gallery(index, model=TINY_MODEL)
    with TestClient(create_app(g), base_url="http://127.0.0.1:8765") as client:
        client.cookies.set(COOKIE, g.token)
        found = client.get("/api/search", params={"q": "a blue square", "type": "video"}).json()["results"]
        assert sorted(r["name"] for r in found) == ["plain.mp4", "sound.mkv", "turned.mov"]
        frame = next(r for r in found if r["name"] == "plain.mp4")
        assert client.get(f"/api/photo/{frame['id']}/thumb").headers["content-type"] == "image/jpeg"
        video = client.get(f"/api/photo/{frame['id']}/original")
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert video.content == (library / "clips" / "plain.mp4").read_bytes()
        info = client.get(f"/api/photo/{frame['id']}").json()
        assert info["name"] == "plain.mp4" and 3.0 <= info["time"] < 6.0 and info["available"]
        assert frame["type"] == "video" and frame["time"] == info["time"]
        assert client.get(f"/api/photo/{frame['id']}/view").headers["content-type"] == "image/jpeg"
        (library / "clips" / "plain.mp4").write_bytes(b"changed since")  # not the file that was indexed
        assert client.get(f"/api/photo/{frame['id']}/original").status_code == 404


def test_a_video_stands_at_its_first_relevant_moment() -> None:
    """A better-scoring moment that the relevance decision turned down does not hide the video."""
    from types import SimpleNamespace

    from clipsearch.index.records import ImageRecord, Moment
    from clipsearch.search.moments import Grouper

    def row(i: int) -> ImageRecord:
        return ImageRecord(f"/v/clip.mp4#t={i}", 1, 1, "fp", 8, 8, "mp4", None, None, None, None, id=i)

    grouper = Grouper(SimpleNamespace(db=sqlite3.connect(":memory:")))  # type: ignore[arg-type]
    grouper.where = {i: Moment(1, "/v/clip.mp4", float(i)) for i in (1, 2, 3)}
    grouper.start()
    first, replaced = grouper.place(0.9, row(1), False)  # best score, turned down: stands for now
    assert first is not None and first.path == "/v/clip.mp4" and replaced is None
    shown, replaced = grouper.place(0.8, row(2), True)
    assert shown is not None and shown.path == "/v/clip.mp4" and grouper.moment[2].time_s == 2.0
    assert replaced == 1, "the relevant moment takes the turned-down one's place: the video still counts once"
    assert grouper.place(0.7, row(3), True) == (None, None) and grouper.others[2] == [(3.0, 0.7)]
    by_score = Grouper(SimpleNamespace(db=sqlite3.connect(":memory:")), prefer_relevant=False)  # type: ignore[arg-type]
    by_score.where = grouper.where
    assert by_score.place(0.9, row(1), False)[0] is not None and by_score.place(0.8, row(2), True) == (None, None)
