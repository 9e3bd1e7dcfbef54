"""What a new user meets in the first hour (issue #17): folders that move, silence, narrow tables, typos."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import app

runner = CliRunner()


def on_a_terminal(home: Path, *args: str, columns: int = 100, cwd: Path | None = None) -> str:
    """`clipsearch ARGS` with a pseudo-terminal as stdin, stdout and stderr: what a user sees."""
    main, sub = pty.openpty()
    env = {**os.environ, "CLIPSEARCH_HOME": str(home), "COLUMNS": str(columns)}
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", *args], stdin=sub, stdout=sub, stderr=sub,
                            env=env, cwd=cwd)
    os.close(sub)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the pty closes when the process ends
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(300)
    os.close(main)
    text = seen.decode("utf-8", "replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\]8;[^\x1b]*\x1b\\|\x1b\[[0-9;?]*[A-Za-z]", "", text)  # links, colours, cursor moves


def _two_folders(photo_dir: Path) -> tuple[Path, Path]:
    """photo_dir/all split into two folders of 24 photos each."""
    a, b = photo_dir / "a", photo_dir / "b"
    a.mkdir()
    b.mkdir()
    for i, f in enumerate(sorted((photo_dir / "all").iterdir())):
        shutil.move(f, (a if i % 2 else b) / f.name)
    (photo_dir / "all").rmdir()
    return a, b


def test_forget_a_folder_and_a_photo_leaves_the_files(photo_dir: Path) -> None:
    a, b = _two_folders(photo_dir)
    assert runner.invoke(app, ["index", str(a), str(b), "-q"]).exit_code == 0
    one = sorted(b.iterdir())[0]

    gone = runner.invoke(app, ["forget", str(a), str(one)])
    assert gone.exit_code == 0, gone.output
    assert "Forgot 25 photos" in gone.stderr and "not touched" in gone.stderr
    assert len(list(a.iterdir())) == 24 and one.exists()  # the photos themselves stay
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st["images"] == 23 and st["roots"] == [str(b)]
    # Nothing of them comes back in searches: FAISS was refreshed from SQLite.
    found = runner.invoke(app, ["query", "a photo of a red circle", "-n", "48", "--min-score", "-1", "-f", "paths"])
    listed = found.stdout.splitlines()
    assert len(listed) == 23 and not any(p.startswith(str(a)) for p in listed) and str(one) not in listed
    assert runner.invoke(app, ["similar", str(one)]).exit_code == 2

    again = runner.invoke(app, ["forget", str(a)])
    assert again.exit_code == 1 and "nothing in the index" in again.stderr
    assert f"note: {one} is still inside {b}" in gone.stderr  # honest: `index` would bring it back
    assert "still inside" not in gone.stderr.split(str(one))[0]  # a, no longer a root, gets no such note


def test_index_without_paths_rescans_every_root_and_prunes_vanished_ones(photo_dir: Path) -> None:
    a, b = _two_folders(photo_dir)
    assert runner.invoke(app, ["index", str(a), "-q"]).exit_code == 0
    assert runner.invoke(app, ["index", str(b), "-q"]).exit_code == 0
    assert runner.invoke(app, ["index", str(b / sorted(p.name for p in b.iterdir())[0]), "-q"]).exit_code == 0
    status = runner.invoke(app, ["status"]).stdout
    assert f"roots:        {a}\n              {b}\n" in status  # a photo inside b adds no root

    (b / "new").mkdir()
    shutil.copy(sorted(a.iterdir())[0], b / "new" / "copy.png")
    shutil.rmtree(a)
    again = runner.invoke(app, ["index"])
    assert again.exit_code == 0, again.output
    assert "1 new" in again.stderr and f"No longer there, so forgotten: {a}." in again.stderr
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st["images"] == 25 and st["roots"] == [str(b)]


def test_index_without_paths_needs_an_index(tmp_path: Path) -> None:
    result = runner.invoke(app, ["index", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 3 and "no index at" in result.stderr
    assert not (tmp_path / "idx").exists()


def test_clear_xmp_only_clears(photo_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("my red things: a photo of something red\nmy blue things: a photo of something blue\n")
    tagged = runner.invoke(app, ["tag", str(photo_dir), "--labels", str(labels), "--templates", "none",
                                 "--threshold", "0.2", "--write-xmp"])
    assert tagged.exit_code == 0, tagged.output
    sidecars = sorted(photo_dir.rglob("*.xmp"))
    assert sidecars and "my red things" in "".join(p.read_text() for p in sidecars)
    counts_before = runner.invoke(app, ["tags", "--json"]).stdout

    cleared = runner.invoke(app, ["tag", "--clear-xmp"])  # no --threshold asked for below 200 photos
    assert cleared.exit_code == 0, cleared.output
    assert f"cleared clipsearch's tags from {len(sidecars)} of {len(sidecars)} XMP sidecars" in cleared.stderr
    # Sidecars clipsearch created hold nothing else, so they are removed (tags/xmp.py); any left has no tag of ours.
    assert "clipsearch" not in "".join(p.read_text() for p in sidecars if p.exists())
    assert runner.invoke(app, ["tags", "--json"]).stdout == counts_before  # the custom tags were not replaced

    both = runner.invoke(app, ["tag", "--clear-xmp", "--write-xmp"])
    assert both.exit_code == 2 and "only removes" in both.stderr


def test_tag_refuses_another_model_and_can_wait(photo_dir: Path, isolated: Path) -> None:
    import threading

    from clipsearch import config
    from clipsearch.index.lock import write_lock

    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    other = runner.invoke(app, ["tag", "--model", config.DEFAULT_MODEL, "--threshold", "0.2"])
    assert other.exit_code == 4 and "was built with" in other.stderr

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with write_lock(isolated / "index", wait=False):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(60)
    try:
        busy = runner.invoke(app, ["tag", str(photo_dir), "--threshold", "0.2", "--label", "red"])
        assert busy.exit_code == 3 and "--wait" in busy.stderr
        # Still held when the command starts: it succeeds only by waiting for the release.
        threading.Timer(1.5, release.set).start()
        waited = runner.invoke(app, ["tag", str(photo_dir), "--threshold", "0.2", "--label", "red", "--wait"])
    finally:
        release.set()
        holder.join()
    assert waited.exit_code == 0, waited.output


def test_readme_gets_a_new_user_started() -> None:
    import tomllib

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    # The two "Try it" commands, word for word as users have copied them.
    assert ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e . && export CLIPSEARCH_HOME=" in readme
    assert ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e '.[test,dev]' && .venv/bin/python -m pytest" \
        in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme and "source .venv/bin/activate" in readme
    assert "pipx install ." in readme and "uv tool install ." in readme and "minutes" in readme
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("pillow-heif") for d in deps)  # HEIC out of the box, not an extra


def test_the_progress_bar_says_the_model_is_loading(photo_dir: Path, isolated: Path) -> None:
    """On a real terminal (a pty): the seconds of the model's load read as such, not as 0/48."""

    shown = on_a_terminal(isolated, "index", str(photo_dir))
    assert "loading the model…" in shown and "indexing" in shown
    assert "model load" in shown and "embedding 48 photos" in shown and "48 photos in the index" in shown
    (photo_dir / "all" / "blue-star-0.png").unlink()
    shutil.copy(photo_dir / "all" / "red-circle-0.png", photo_dir / "all" / "copy.png")
    assert on_a_terminal(isolated, "index", str(photo_dir), "-q") == ""


def test_quiet_means_silent_even_while_preparing_the_text_encoder(photo_dir: Path, text_model_on: None) -> None:
    result = runner.invoke(app, ["index", str(photo_dir), "-q"])
    assert result.exit_code == 0 and result.output == "" and result.stderr == ""
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["text_model"]


def test_no_network_fails_fast_and_models_download_gives_useful_advice(monkeypatch: pytest.MonkeyPatch,
                                                                      photo_dir: Path) -> None:
    import huggingface_hub

    from clipsearch import config
    from clipsearch.model import names

    def never(**_: object) -> str:
        raise AssertionError("the hub client was tried (and would retry for ~25 s)")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(names, "hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", never)
    index = runner.invoke(app, ["index", str(photo_dir), "--model", config.DEFAULT_MODEL])
    assert index.exit_code == 4 and "could not reach the Hugging Face Hub" in index.stderr
    assert "clipsearch models download" in index.stderr  # the advice that fits here
    download = runner.invoke(app, ["models", "download", config.DEFAULT_MODEL])
    assert download.exit_code == 4 and "could not download" in download.stderr
    assert "clipsearch models download" not in download.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = runner.invoke(app, ["models", "download", config.DEFAULT_MODEL])
    assert offline.exit_code == 4 and "HF_HUB_OFFLINE is set" in offline.stderr
    assert "clipsearch models download" not in offline.stderr


def _long_named(photo_dir: Path) -> Path:
    deep = photo_dir / "a rather long folder name" / "and another one inside it" / "2024"
    deep.mkdir(parents=True)
    for f in sorted((photo_dir / "all").glob("red-*.png")):
        shutil.copy(f, deep / f"holiday picture from the beach {f.name}")
    return deep


def test_narrow_terminals_keep_paths_whole_or_shorten_them_from_the_left(photo_dir: Path, isolated: Path) -> None:
    deep = _long_named(photo_dir)
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    shown = on_a_terminal(isolated, "query", "a photo of a red circle", "-n", "5", "--in", str(deep),
                          "--min-score", "-1", columns=40, cwd=photo_dir)
    rows = [line for line in shown.splitlines() if line[:1].isdigit()]
    assert len(rows) == 5 and all(len(line) <= 40 for line in shown.splitlines())  # one line per result
    assert all(".png" in line and "…" in line for line in rows)  # the file name's end, cut from the left
    dups = on_a_terminal(isolated, "duplicates", columns=40, cwd=photo_dir)
    lines = [line for line in dups.splitlines() if ".png" in line]
    assert lines and all(len(line.rstrip()) <= 40 and line.rstrip().endswith(".png") for line in lines)
    assert "keep" in dups
    wide = on_a_terminal(isolated, "query", "a photo of a red circle", "-n", "3", columns=200, cwd=photo_dir)
    assert "all/red-circle-0.png" in wide and str(photo_dir) not in wide  # relative under the current folder


def test_a_table_in_a_pipe_never_breaks_a_name(photo_dir: Path) -> None:
    deep = _long_named(photo_dir)
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    table = runner.invoke(app, ["query", "a photo of a red circle", "-n", "5", "--in", str(deep), "-f", "table",
                                "--min-score", "-1"], env={"COLUMNS": "40"})
    names = [p.name for p in deep.iterdir()]
    rows = [line for line in table.stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == 5 and all(any(n in line for n in names) for line in rows)
    assert all(str(deep) in line or "~" in line for line in rows)  # whole paths
    dups = runner.invoke(app, ["duplicates", "-f", "table"], env={"COLUMNS": "40"})
    assert sum(1 for line in dups.stdout.splitlines() if "holiday picture from the beach red-" in line) >= 4


def test_wrong_values_are_usage_errors(photo_dir: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    q = ["query", "a photo of a red circle"]
    cases = {
        "unknown --type jpgg": [*q, "--type", "png,jpgg"],
        "--in": [*q, "--in", str(tmp_path / "nowhere")],
        "is not before --before": [*q, "--after", "2021", "--before", "2020-06"],
        "'banana' is not one of": [*q, "--device", "banana"],
        "'fp8' is not one of": [*q, "--precision", "fp8"],
        "does not combine with --format json": [*q, "-0", "-f", "json"],
        "does not combine with --json": ["similar", str(photo_dir / "all" / "red-circle-0.png"), "-0", "--json"],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.stderr and result.stdout == "", (args, result.stderr)
        assert result.stderr.splitlines()[-1].startswith("error: "), result.stderr  # never click's "Error:"
    ok = runner.invoke(app, [*q, "--type", "PNG", "--device", "cpu", "--precision", "FP32", "-n", "1"])
    assert ok.exit_code == 0, ok.output
    dash = runner.invoke(app, ["query", "-red"])
    assert dash.exit_code == 2 and 'clipsearch query -- "-red"' in dash.stderr
    assert runner.invoke(app, ["query", "-n", "1", "--min-score", "-1", "--", "-red"]).exit_code == 0


def test_one_non_image_file_says_why_nothing_was_indexed_and_status_agrees(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# not a photo\n")
    result = runner.invoke(app, ["index", str(readme)])
    assert result.exit_code == 0, result.output
    assert "Nothing was indexed" in result.stderr and ".md is not a photo format" in result.stderr
    st = json.loads(runner.invoke(app, ["status", "--json", "--show-skipped"]).stdout)
    assert st["skipped"] == {"not an image": 1} and st["skipped_files"][0]["path"] == str(readme)
    readme.unlink()
    runner.invoke(app, ["index", str(tmp_path), "-q"])  # gone: no longer counted
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["skipped"] == {}


def test_skip_counts_agree_between_the_summary_and_status(photo_dir: Path) -> None:
    (photo_dir / "all" / "dangling.png").symlink_to(photo_dir / "nowhere.png")
    (photo_dir / "all" / "empty.png").write_bytes(b"")
    summary = json.loads(runner.invoke(app, ["index", str(photo_dir), "--json", "--follow-symlinks"]).stdout)
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert summary["skipped"] == st["skipped"] and sum(st["skipped"].values()) == 2, (summary["skipped"], st)
    # A second run finds the same two: a skip the scan itself reports is not forgotten as "gone".
    again = json.loads(runner.invoke(app, ["index", str(photo_dir), "--json", "--follow-symlinks"]).stdout)
    st = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert again["skipped"] == st["skipped"] and sum(st["skipped"].values()) == 2, (again["skipped"], st)


def test_the_cli_accepts_the_devices_and_precisions_the_embedder_does() -> None:
    from clipsearch.cli import options
    from clipsearch.model import embedder

    assert set(options.DEVICES) == set(embedder.DEVICES) and set(options.PRECISIONS) == set(embedder.PRECISIONS)


def test_unwritable_html_is_a_usage_error_naming_the_path(photo_dir: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    for args in (["query", "a photo of a red circle"], ["duplicates"]):
        bad = runner.invoke(app, [*args, "--html", "/nonexistent/dir/x.html"])
        assert bad.exit_code == 2 and "cannot write the contact sheet /nonexistent/dir/x.html" in bad.stderr
        assert bad.stdout == ""  # refused before any result was printed
        folder = runner.invoke(app, [*args, "--html", str(tmp_path)])
        assert folder.exit_code == 2 and "it is a folder" in folder.stderr
    sheet = tmp_path / "sheet.html"
    done = runner.invoke(app, ["query", "a photo of a red circle", "--html", str(sheet)])
    assert done.exit_code == 0 and f"wrote the contact sheet {sheet}" in done.stderr and sheet.exists()


def test_duplicates_html_and_summary(photo_dir: Path, tmp_path: Path) -> None:
    evil = photo_dir / "all" / "holiday\u202egnp.exe.png"  # shows as "holidaygnp.exe.png" reversed
    shutil.copy(photo_dir / "all" / "red-circle-0.png", evil)
    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    sheet = tmp_path / "dups.html"
    result = runner.invoke(app, ["duplicates", "--html", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "1 group (1 exact): 1 copy could go" in result.stderr
    page = sheet.read_text()
    assert "<title>clipsearch: duplicates</title>" in page and "\u202e" not in page and "\\u202e" in page
    assert page.count('<a href="file://') == 2  # each thumbnail opens its photo
    table = runner.invoke(app, ["duplicates", "-f", "table"]).stdout
    assert re.search(r"\d{4}-\d\d-\d\d", table)  # the date column, file time without EXIF
    runner.invoke(app, ["tag", "--label", "red", "--threshold", "0.2"])
    tags = runner.invoke(app, ["tags"]).stdout.splitlines()
    assert tags[0].split() == ["photos", "tag", "source"]


def test_pillows_words_stay_out_of_skip_details(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("1", (19000, 19000)).save(folder / "huge.png")  # 361 MP, 44 KB: past Pillow's own guard
    result = runner.invoke(app, ["index", str(folder), "--show-skipped"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("too many pixels\t") and "19000x19000 is over the 200 MP limit" in line
    assert "178956970" not in line and "Image size" not in line and not line.endswith(",")


def test_help_wraps_between_words_and_is_not_cut() -> None:
    for width in (60, 70, 80, 100):
        for args in (["tag", "learn", "--help"], ["index", "--help"], ["query", "--help"]):
            text = runner.invoke(app, args, terminal_width=width).stdout
            assert not re.search(r"\w-\n", text), (width, args, text)  # no "--no-" / "text"
    models = runner.invoke(app, ["models", "--help"], terminal_width=80).stdout
    assert "(e.g." not in models and "download  Download MODEL's weights into the Hugging Face cache" in models


def _jpeg_at(path: Path, colour: tuple[int, int, int], lat: float, lon: float) -> None:
    """A JPEG with EXIF GPS as cameras write it: degrees, minutes, seconds and N/S, E/W."""
    from PIL import Image

    def dms(x: float) -> tuple[float, float, float]:
        d, rest = int(abs(x)), (abs(x) - int(abs(x))) * 60
        return (float(d), float(int(rest)), round((rest - int(rest)) * 60, 4))

    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)})
    Image.new("RGB", (96, 96), colour).save(path, "JPEG", exif=exif)


def test_near_filters_by_the_recorded_gps(tmp_path: Path) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    _jpeg_at(folder / "paris.jpg", (200, 30, 30), 48.8584, 2.2945)      # the Eiffel tower
    _jpeg_at(folder / "versailles.jpg", (190, 40, 30), 48.8049, 2.1204)  # ~14 km away
    _jpeg_at(folder / "sydney.jpg", (210, 20, 40), -33.8568, 151.2153)
    from PIL import Image

    Image.new("RGB", (96, 96), (200, 30, 30)).save(folder / "nowhere.jpg")  # no GPS at all
    assert runner.invoke(app, ["index", str(folder), "-q"]).exit_code == 0
    q = ["query", "a photo of something red", "--min-score", "-1", "-f", "paths"]
    near = runner.invoke(app, [*q, "--near", "48.858,2.294,5"])
    assert near.exit_code == 0 and near.stdout == f"{folder / 'paris.jpg'}\n"
    wider = runner.invoke(app, [*q, "--near", "48.858,2.294,20"]).stdout.splitlines()
    assert sorted(Path(p).name for p in wider) == ["paris.jpg", "versailles.jpg"]
    south = runner.invoke(app, ["similar", str(folder / "paris.jpg"), "--min-score", "-1", "-f", "paths",
                                "--near", "-33.86,151.21,10"])
    assert south.stdout == f"{folder / 'sydney.jpg'}\n"
    for bad in ("48.8,2.2", "91,0,5", "a,b,c", "48.8,2.2,0"):
        result = runner.invoke(app, [*q, "--near", bad])
        assert result.exit_code == 2 and "--near" in result.stderr, bad


def test_copy_link_and_open_the_results(photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    assert runner.invoke(app, ["index", str(photo_dir), "-q"]).exit_code == 0
    picked, linked = tmp_path / "picked", tmp_path / "linked"
    (picked).mkdir()
    (picked / "red-circle-0.png").write_bytes(b"mine")  # a name already taken is never overwritten
    q = ["query", "a photo of a red circle", "-n", "3", "--min-score", "-1", "-f", "paths"]
    result = runner.invoke(app, [*q, "--copy-to", str(picked), "--link-to", str(linked)])
    assert result.exit_code == 0, result.output
    assert f"copied 3 photos into {picked}" in result.stderr and f"linked 3 photos into {linked}" in result.stderr
    assert (picked / "red-circle-0.png").read_bytes() == b"mine"
    assert (picked / "red-circle-0 (2).png").read_bytes() == (photo_dir / "all" / "red-circle-0.png").read_bytes()
    links = sorted(linked.iterdir())
    assert len(links) == 3 and all(p.is_symlink() and p.resolve().parent == photo_dir / "all" for p in links)
    bad = runner.invoke(app, [*q, "--copy-to", "/proc/no/such/dir"])
    assert bad.exit_code == 2 and "--copy-to /proc/no/such/dir" in bad.stderr and bad.stdout == ""

    bin_dir, opened = tmp_path / "bin", tmp_path / "opened.txt"
    bin_dir.mkdir()
    (bin_dir / "xdg-open").write_text(f"#!/bin/sh\necho \"$1\" > {opened}\n")
    (bin_dir / "xdg-open").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = runner.invoke(app, [*q, "--open"])
    assert result.exit_code == 0, result.output
    for _ in range(300):  # the viewer starts detached; wait for it to have been called
        if opened.exists() and opened.read_text():
            break
        time.sleep(0.1)
    assert opened.read_text().strip() == result.stdout.splitlines()[0]


def test_camera_filter_from_exif_make_and_model(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "cameras"
    folder.mkdir()
    for name, make, model in (("phone.jpg", "Apple", "iPhone 13"), ("canon.jpg", "Canon", "Canon EOS R5\0"),
                              ("plain.jpg", "", "")):
        exif = Image.Exif()
        if make:
            exif[0x010F], exif[0x0110] = make, model
        Image.new("RGB", (96, 96), (200, 30, 30)).save(folder / name, "JPEG", exif=exif)
    assert runner.invoke(app, ["index", str(folder), "-q"]).exit_code == 0
    q = ["query", "a photo of something red", "--min-score", "-1", "-f", "paths"]
    assert runner.invoke(app, [*q, "--camera", "iphone 13"]).stdout == f"{folder / 'phone.jpg'}\n"
    assert runner.invoke(app, [*q, "--camera", "canon eos"]).stdout == f"{folder / 'canon.jpg'}\n"
    assert runner.invoke(app, [*q, "--camera", "nikon"]).exit_code == 1
    from clipsearch import config
    from clipsearch.index.store import Store

    with Store.open(config.index_dir()) as store:
        records = {Path(r.path).name: r.camera for r in store.iter_images()}
    assert records == {"phone.jpg": "Apple iPhone 13", "canon.jpg": "Canon EOS R5", "plain.jpg": None}
