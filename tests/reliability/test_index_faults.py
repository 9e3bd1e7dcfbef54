"""Faults around the index folder (issue #16): read-only, full, foreign, damaged, vanishing files.

Each fault is injected for real where this machine allows it: a read-only bind mount or a tiny
tmpfs in a private mount namespace (`unshare`), bytes written into the database. None may end in
exit 70 ("internal error"); each ends as docs/reliability.md's fault table says.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapes
from click.testing import CliRunner
from conftest import TINY_MODEL

from clipsearch import Library
from clipsearch.cli import app

runner = CliRunner()
INTERNAL = 70


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(photos, index) built once per module; tests work on copies of the index."""
    root = tmp_path_factory.mktemp("built")
    photos = root / "photos"
    shapes.write_heldout(photos, per_class=1, seed=7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_HOME", str(root / "home"))
        mp.setenv("CLIPSEARCH_TEXT_MODEL", "off")
        mp.setenv("HF_HUB_OFFLINE", "1")
        Library(index=root / "index", model=TINY_MODEL).index([photos])
    yield photos, root / "index"


@pytest.fixture
def index_copy(built: tuple[Path, Path]) -> tuple[Path, Path]:
    """(photos, the default index): a private copy of the built index where `Library()` looks."""
    photos, source = built
    target = Library().path
    shutil.copytree(source, target)
    return photos, target


def _namespace_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespace = pytest.mark.skipif(not _namespace_works(), reason="no private mount namespace here "
                                     "(`unshare -rm` refused): a read-only or tiny filesystem cannot be made "
                                     "without privileges, and chmod does not stop root")

# Runs CLI commands in-process (one interpreter for all of them) and prints their exit codes and output.
_RUNNER = """
import json, sys
from click.testing import CliRunner
from clipsearch.cli import app
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    out.append({"args": args, "code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
print("RESULTS" + json.dumps(out))
"""


def _in_namespace(setup: str, commands: list[list[str]]) -> list[dict[str, object]]:
    """`commands` run after the shell `setup` (mounts) in a private mount namespace."""
    script = f"{setup} && exec {sys.executable} -c \"$0\" \"$1\""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, _RUNNER, json.dumps(commands)],
                          capture_output=True, text=True, timeout=600)
    assert "RESULTS" in proc.stdout, proc.stderr
    results: list[dict[str, object]] = json.loads(proc.stdout.split("RESULTS", 1)[1])
    return results


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- a read-only index folder ---------------------------------------------------------------------------------


@needs_namespace
def test_a_read_only_index_answers_reads_and_refuses_writes(index_copy: tuple[Path, Path]) -> None:
    photos, folder = index_copy
    for faiss_file in folder.glob("vectors.*"):
        faiss_file.unlink()  # the cache must be rebuilt, in memory, where nothing can be saved
    before = _tree(folder)
    one = str(sorted(photos.rglob("*.png"))[0])
    reads = [["query", "a photo of a red circle", "--top", "3", "--min-score", "-1"], ["similar", one, "--top", "3"],
             ["status"],
             ["status", "--json"], ["duplicates"], ["tags"], ["tags", "export"]]
    writes = [["index", str(photos)], ["tag", str(photos)], ["tag", "forget", "nothing"]]
    q = f"'{folder}'"
    results = _in_namespace(f"mount --bind {q} {q} && mount -o remount,bind,ro {q} && ! touch {q}/probe",
                            reads + writes)
    by_command = {" ".join(map(str, r["args"])): r for r in results}
    for args in reads:
        r = by_command[" ".join(args)]
        # duplicates exits 1 when there are none: a documented answer, not a failure
        assert r["code"] in ((0, 1) if args[0] == "duplicates" else (0,)), r
    assert len(str(by_command["query a photo of a red circle --top 3 --min-score -1"]["stdout"]).splitlines()) == 3
    assert "read-only" in str(by_command["query a photo of a red circle --top 3 --min-score -1"]["stderr"])
    assert "vector cache: not saved: built in memory" in str(by_command["status"]["stdout"])
    for args in writes:
        r = by_command[" ".join(args)]
        assert r["code"] == 3, r
        lines = [line for line in str(r["stderr"]).splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "read-only" in lines[0], r
    assert _tree(folder) == before  # nothing written: no lock, no -shm, no FAISS file


# --- a full disk ----------------------------------------------------------------------------------------------


@needs_namespace
def test_a_full_disk_still_answers_queries_from_memory(index_copy: tuple[Path, Path], tmp_path: Path) -> None:
    photos, folder = index_copy
    for faiss_file in folder.glob("vectors.*"):
        faiss_file.unlink()
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(sorted(photos.rglob("*.png"))[0], new / "extra.png")
    stash, q = tmp_path / "stash", f"'{folder}'"
    shutil.copytree(folder, stash)
    # A 1 MB tmpfs holding the index, filled up to 40 KB from the end: SQLite's -shm (32 KB) fits,
    # the FAISS file (13 KB) does not.
    setup = (f"mount -t tmpfs -o size=1m tmpfs {q} && cp -r '{stash}'/. {q} && "
             f"{{ cat /dev/zero > {q}/filler 2>/dev/null; truncate -s -40K {q}/filler; }}")
    one = str(sorted(photos.rglob("*.png"))[1])
    results = _in_namespace(setup, [["index", str(new)],
                                    ["query", "a photo of a red circle", "--top", "3", "--min-score", "-1"],
                                    ["similar", one, "--top", "3"], ["status"]])
    index_run, query, similar, status = results
    assert index_run["code"] in (0, 3) and (index_run["code"] == 0 or "intact" in str(index_run["stderr"])), index_run
    for r in (query, similar):
        assert r["code"] == 0, r
        assert len(str(r["stdout"]).splitlines()) == 3
        assert str(r["stderr"]).count("could not save the vector cache") == 1, r  # said once
        assert "disk may be full" in str(r["stderr"])
    assert status["code"] == 0 and "vector cache: missing" in str(status["stdout"]), status
    assert not any(r["code"] == INTERNAL for r in results)


# --- a FAISS file from another index --------------------------------------------------------------------------


def test_a_faiss_file_of_another_index_with_the_same_generation_and_count_is_not_used(
        index_copy: tuple[Path, Path], tmp_path: Path) -> None:
    photos, folder = index_copy
    count = len(list(photos.rglob("*.png")))
    others = tmp_path / "others"
    shapes.write_heldout(others, per_class=1, seed=8)  # other photos, as many
    other = Library(index=tmp_path / "other")
    other.index([others])
    assert other.status().images == count == Library().status().images
    (mine,) = folder.glob("vectors.*.faiss")
    (theirs,) = other.path.glob("vectors.*.faiss")
    assert mine.name == theirs.name  # same generation: the name alone cannot tell them apart
    expected = [(h.path, round(h.score, 5)) for h in Library().search("a photo of a yellow ring", top=10)]
    shutil.copyfile(theirs, mine)
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "vector cache: from another index" in status.stdout
    assert [(h.path, round(h.score, 5)) for h in Library().search("a photo of a yellow ring", top=10)] == expected
    assert "vector cache: current" in runner.invoke(app, ["status"]).stdout  # rebuilt and saved


# --- a damaged database ---------------------------------------------------------------------------------------


def _damage(db: Path, how: str) -> None:
    import contextlib

    with contextlib.closing(sqlite3.connect(db)) as conn:
        blob = conn.execute("SELECT vector FROM vectors ORDER BY image_id LIMIT 1 OFFSET "
                            "(SELECT count(*) / 2 FROM vectors)").fetchone()[0]
    data = bytearray(db.read_bytes())
    if how == "middle":  # the page holding the middle photo's vector overwritten with random bytes
        page = 4096
        start = data.find(blob) // page * page
        data[start:start + page] = os.urandom(page)
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif how == "empty":
        data = bytearray()
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["middle", "truncated", "garbage", "empty"])
def test_a_damaged_database_is_reported_and_repaired(index_copy: tuple[Path, Path], how: str) -> None:
    photos, folder = index_copy
    count = len(list(photos.rglob("*.png")))
    db = folder / "clipsearch.db"
    _damage(db, how)
    damaged = db.read_bytes()
    codes = {}
    for args in (["status"], ["index", str(photos)], ["duplicates"], ["index", str(photos), "--rebuild"],
                 ["query", "a red circle"], ["similar", str(sorted(photos.rglob("*.png"))[0])], ["tags"]):
        if args[0] == "query":  # the commands that refused wrote nothing (a query may cache its text)
            assert db.read_bytes() == damaged
        result = runner.invoke(app, args)
        codes[args[0] + (" --rebuild" if "--rebuild" in args else "")] = result.exit_code
        assert result.exit_code != INTERNAL, (args, result.stderr)
        if result.exit_code == 3:
            assert "damaged" in result.stderr and "clipsearch repair" in result.stderr, (args, result.stderr)
    # The commands that check (or write) say so; an empty file is not a new index.
    assert codes["status"] == codes["index"] == codes["duplicates"] == codes["index --rebuild"] == 3, codes
    assert not list(folder.glob("*.tmp*"))

    repaired = runner.invoke(app, ["repair"])
    assert repaired.exit_code == 0 and "repaired" in repaired.stderr, repaired.stderr
    (aside,) = folder.glob("clipsearch.damaged-*.db")
    assert aside.stat().st_size == len(damaged)
    assert runner.invoke(app, ["repair"]).stderr.startswith("the index at")  # now healthy: nothing to do
    kept = Library().status().images
    # One page of vectors costs the photos on it (re-embedded below); a cut or garbage costs more.
    assert (0 < kept < count) if how == "middle" else (kept < count)
    print(f"{how}: repair kept {kept} of {count} photos")
    again = runner.invoke(app, ["index", str(photos), "--json"])
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["new"] == count - kept and summary["unchanged"] == kept  # only the lost ones re-embedded
    st = runner.invoke(app, ["status"])
    assert st.exit_code == 0 and f"photos:       {count}" in st.stdout and "vector cache: current" in st.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- the -wal deleted under a running indexer ------------------------------------------------------------------


def test_queries_while_the_wal_is_deleted_mid_run_end_cleanly(index_copy: tuple[Path, Path], tmp_path: Path) -> None:
    import time

    import numpy as np

    photos, folder = index_copy
    more = tmp_path / "more"
    more.mkdir()
    rng = np.random.default_rng(5)
    for i in range(300):  # two commits: the -wal is deleted between them
        shapes.sample(rng).image.save(more / f"m{i:04d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(more), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wal = folder / "clipsearch.db-wal"
    deleted = False
    codes: list[int] = []
    one = str(sorted(photos.rglob("*.png"))[0])
    try:
        while proc.poll() is None:
            if not deleted and wal.exists() and wal.stat().st_size > 0:
                wal.unlink()
                deleted = True
            if deleted:
                for args in (["similar", one, "--top", "3", "--min-score", "-1"],
                             ["query", "a photo of a red circle", "--top", "3", "--min-score", "-1"]):
                    result = runner.invoke(app, args)
                    codes.append(result.exit_code)
                    assert result.exit_code in (0, 3), (args, result.stderr)
                    if result.exit_code == 3:
                        assert "could not read the index" in result.stderr and "internal" not in result.stderr
            else:
                time.sleep(0.05)
    finally:
        proc.wait(timeout=600)
    assert deleted and codes, "the indexer ended before its -wal could be deleted"
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    with sqlite3.connect(folder / "clipsearch.db") as conn:  # what the indexer committed is consistent
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert runner.invoke(app, ["status"]).exit_code == 0
    print(f"-wal deleted mid-run: {len(codes)} commands, {codes.count(3)} exit 3, {codes.count(0)} exit 0")


# --- a huge junk file ------------------------------------------------------------------------------------------


def test_a_2gb_junk_file_named_jpg_is_skipped_without_being_read(tmp_path: Path, built: tuple[Path, Path]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sorted(built[0].rglob("*.png"))[0], photos / "real.png")
    with open(photos / "big.jpg", "wb") as f:  # sparse: 2 GB of zeros that cost no disk
        f.truncate(2 * 1024 ** 3)
    with open(photos / "big-with-a-jpeg-start.jpg", "wb") as f:  # starts like a JPEG, then nothing
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(2 * 1024 ** 3)
    result = runner.invoke(app, ["index", str(photos), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["new"] == 1 and summary["skipped"] == {"not an image": 1, "too large": 1}
    reasons = {Path(p).name: (r, d) for p, r, d in Library().skipped()}
    assert reasons["big.jpg"][0] == "not an image" and "first bytes" in reasons["big.jpg"][1]
    assert reasons["big-with-a-jpeg-start.jpg"] == ("too large", "2.1 GB is more than any .jpg within the 200 MP "
                                                                 "limit can be")
    # A small file that starts like a JPEG goes to the decoder, which finds it broken.
    with open(photos / "small-junk.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + bytes(4096))
    again = json.loads(runner.invoke(app, ["index", str(photos), "--json"]).stdout)
    assert again["skipped"] == {"not an image": 2, "too large": 1}
    details = {Path(p).name: d for p, r, d in Library().skipped()}
    assert details["small-junk.jpg"] == "no image format recognised the contents"


# --- a kill during the text-model export ----------------------------------------------------------------------


def test_a_kill_during_the_text_model_export_is_cleaned_up_and_redone(
        index_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import time

    from clipsearch.index.store import Store
    from clipsearch.model import text_tower

    photos, folder = index_copy
    monkeypatch.setenv("CLIPSEARCH_TEXT_MODEL", "on")
    # Nothing to index: the run goes straight to exporting the text model, and is killed during it.
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", str(photos), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not list(folder.glob(".text-model.*.tmp/*")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export ended before it could be killed"
    assert list(folder.glob(".text-model.*.tmp")) and not (folder / "text-model").exists()
    with Store.open(folder) as store:
        sha = store.model_identity().weights_sha256  # type: ignore[union-attr]

    again = runner.invoke(app, ["index", str(photos), "--json"])  # nothing changed since
    assert again.exit_code == 0 and json.loads(again.stdout)["unchanged"] == len(list(photos.rglob("*.png")))
    assert not list(folder.glob(".text-model.*")), "a dead writer's export was left behind"
    assert text_tower.available(folder, sha)

    meta = json.loads((folder / "text-model" / "meta.json").read_text())
    model_file = folder / "text-model" / meta["file"]
    size = model_file.stat().st_size
    with open(model_file, "r+b") as f:  # broken: cut short
        f.truncate(size // 2)
    assert not text_tower.available(folder, sha)  # not used by queries meanwhile
    assert runner.invoke(app, ["index", str(photos), "-q"]).exit_code == 0
    assert text_tower.available(folder, sha) and model_file.stat().st_size == size


# --- skip records of deleted files ----------------------------------------------------------------------------


def test_skip_records_are_forgotten_with_the_files_they_describe(tmp_path: Path, built: tuple[Path, Path]) -> None:
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    for folder in (photos, elsewhere):
        folder.mkdir()
        shutil.copy(sorted(built[0].rglob("*.png"))[0], folder / "real.png")
    for i in range(4):
        (photos / f"bad{i}.jpg").write_text(f"not a photo {i}")
    (elsewhere / "bad.jpg").write_text("not a photo either")
    assert runner.invoke(app, ["index", str(photos), str(elsewhere), "-q"]).exit_code == 0
    assert Library().status().skipped == {"not an image": 5}
    for i in range(3):
        (photos / f"bad{i}.jpg").unlink()
    result = runner.invoke(app, ["index", str(photos), "--json"])  # only this root: elsewhere's skip stays
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == {"not an image": 1}
    assert Library().status().skipped == {"not an image": 2}
    assert sorted(Path(p).name for p, _, _ in Library().skipped()) == ["bad.jpg", "bad3.jpg"]
    shutil.rmtree(elsewhere)
    (tmp_path / "elsewhere").mkdir()
    assert runner.invoke(app, ["index", str(photos), str(elsewhere), "-q"]).exit_code == 0
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert status["skipped"] == {"not an image": 1} and status["images"] == 1


# --- XMP sidecars: clipsearch's own tags only, the file's layout kept ------------------------------------------

USER_SIDECAR = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<!-- written by a photo manager -->
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Some Toolkit 1.0">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/" xmpRights:Marked="True"/>
  <rdf:Description rdf:about="" xmlns:dcx="http://purl.org/dc/elements/1.1/">
   <!-- my own keywords -->
   <dcx:subject><rdf:Bag><rdf:li>dog</rdf:li><rdf:li>holiday</rdf:li></rdf:Bag></dcx:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
""" + " " * 200 + """
<?xpacket end="w"?>
"""


def test_xmp_clear_removes_exactly_what_clipsearch_wrote_and_keeps_the_layout(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from clipsearch.tags import xmp

    photo, fresh = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for p in (photo, fresh):
        p.write_bytes(b"\xff\xd8\xff")
    sidecar = tmp_path / "a.jpg.xmp"
    sidecar.write_text(USER_SIDECAR, encoding="utf-8")
    sidecar.chmod(0o600)
    xmp.update(str(photo), ["dog", "cat"])  # "dog" is also the user's own keyword
    text = sidecar.read_text(encoding="utf-8")
    rdf = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
    root = ET.fromstring(xmp._split(text)[1])
    first, second = root.iter(f"{rdf}Description")
    assert first.find("{http://purl.org/dc/elements/1.1/}subject") is None  # stays in the second one
    subjects = [li.text for li in second.iter(f"{rdf}li")]
    assert subjects.count("dog") == 1 and "cat" in subjects
    assert "clipsearch|auto|cat" in [li.text for li in root.iter(f"{rdf}li")]
    assert text.startswith('<?xpacket begin="\ufeff"') and text.endswith(" " * 200 + '\n<?xpacket end="w"?>\n')
    assert "<!-- written by a photo manager -->" in text and "<!-- my own keywords -->" in text
    assert "dcx:subject" in text and "xmpRights:Marked" in text and 'x:xmptk="Some Toolkit 1.0"' in text
    assert sidecar.stat().st_mode & 0o777 == 0o600

    xmp.update(str(photo), [])  # --clear-xmp
    cleared = sidecar.read_text(encoding="utf-8")
    assert "clipsearch" not in cleared and "cat" not in cleared
    assert "<rdf:li>dog</rdf:li>" in cleared and "<rdf:li>holiday</rdf:li>" in cleared  # the user's stay
    assert cleared.startswith('<?xpacket begin="\ufeff"') and "<!-- my own keywords -->" in cleared
    assert sidecar.stat().st_mode & 0o777 == 0o600

    path, changed = xmp.update(str(fresh), ["sunset"])  # a sidecar clipsearch creates ...
    assert changed and path.exists() and "clipsearch|auto|sunset" in path.read_text(encoding="utf-8")
    path, changed = xmp.update(str(fresh), [])  # ... is removed when clearing empties it
    assert changed and not path.exists()
    assert xmp.update(str(fresh), []) == (path, False) and not path.exists()  # and clearing again creates none
    for hostile in ('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
                    '&e;</x:xmpmeta>', '<x:xmpmeta xmlns:x="adobe:ns:meta/"><unclosed></x:xmpmeta>'):
        (tmp_path / "b.jpg.xmp").write_text(hostile)
        with pytest.raises(ValueError, match="not valid XML"):
            xmp.update(str(fresh), ["x"])
        assert (tmp_path / "b.jpg.xmp").read_text() == hostile


# --- the small ones ---------------------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height 1-bit grey pixels and holds none."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def test_the_pixel_limit_is_ours_not_pillows(tmp_path: Path) -> None:
    from clipsearch.ingest import images
    from clipsearch.model.identity import Preprocess

    big = tmp_path / "big.png"
    big.write_bytes(_png_header(19_000, 10_000))  # 190 MP: above Pillow's 179 MP, below our 200 MP default
    pre = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(images.SkipFile) as within:
        images.decode(str(big), pre)
    assert within.value.reason != "too many pixels"  # reached the decoder: the file itself is broken
    with pytest.raises(images.SkipFile) as over:
        images.decode(str(big), pre, max_pixels=150_000_000)
    assert over.value.reason == "too many pixels" and "150 MP" in over.value.detail


def test_the_small_ones_are_usage_errors_with_clear_messages(index_copy: tuple[Path, Path], tmp_path: Path) -> None:
    import warnings

    photos, _ = index_copy
    nan = runner.invoke(app, ["query", "a red circle", "--min-score", "nan"])
    assert nan.exit_code == 2 and "--min-score" in nan.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy overflow warning would fail here
        for weight in ("1e20", "5e3"):
            result = runner.invoke(app, ["query", f"{weight}:red + a circle"])
            assert result.exit_code == 2 and "out of range" in result.stderr, (weight, result.stderr)
        # More than two integer digits is no weight at all (docs/search.md): searched as text.
        assert runner.invoke(app, ["query", "99999999999999999999:red + a circle"]).exit_code in (0, 1)
        ok = runner.invoke(app, ["query", "2.5e1:a photo of a red circle + a circle", "--min-score", "-1", "-n", "3"])
        assert ok.exit_code == 0 and len(ok.stdout.splitlines()) == 3
    url = runner.invoke(app, ["query", "--image", "http://example.com/photo.jpg"])
    assert url.exit_code == 2 and "not an address: 'http://example.com/photo.jpg'" in url.stderr
    new = tmp_path / "new-index"
    garbage = runner.invoke(app, ["index", str(photos), "--index", str(new), "--model", "garbage"])
    assert garbage.exit_code in (2, 4) and "internal" not in garbage.stderr, garbage.stderr
    assert not (new / "clipsearch.db").exists() and not list(new.glob("clipsearch.db*"))


def test_an_ivf_file_is_checked_against_the_database_too(index_copy: tuple[Path, Path], tmp_path: Path) -> None:
    from clipsearch.index.store import Store
    from clipsearch.index.vectors import VectorIndex, reflects

    _, folder = index_copy
    others = tmp_path / "others"
    shapes.write_heldout(others, per_class=1, seed=8)
    Library(index=tmp_path / "other").index([others])
    with Store.open(folder) as mine, Store.open(tmp_path / "other") as theirs:
        ivf = VectorIndex.build(mine, flat_limit=1)  # the large-library kind, on a small one
        assert ivf.kind == "ivf-sq8"
        assert reflects(ivf.index, mine) and not reflects(ivf.index, theirs)
        flat = VectorIndex.build(theirs)
        assert reflects(flat.index, theirs) and not reflects(flat.index, mine)
