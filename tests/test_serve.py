"""`clipsearch serve` through Starlette's test client: the API, and every protection in docs/serve.md."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'clipsearch[serve]')")

import gallery
from PIL import Image
from starlette.testclient import TestClient

from clipsearch.serve import Gallery, create_app
from clipsearch.serve.security import COOKIE, csrf_for, host_allowed

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(photos folder, index folder), built once for the module's read-only tests."""
    root = tmp_path_factory.mktemp("serve-lib")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("CLIPSEARCH_TEXT_MODEL", "off")
        gallery.build(root / "photos", root / "index")
    return root / "photos", root / "index"


@contextlib.contextmanager
def _client(index: Path, **kwargs: object) -> Iterator[tuple[TestClient, Gallery]]:
    g = Gallery(index, model=gallery.TINY_MODEL, **kwargs)  # type: ignore[arg-type]
    with TestClient(create_app(g), base_url=BASE) as client:
        yield client, g


@pytest.fixture(scope="module")
def served(library: tuple[Path, Path]) -> Iterator[tuple[TestClient, Gallery]]:
    """A signed-in client: the token cookie set, as after the first visit."""
    with _client(library[1]) as (client, g):
        client.cookies.set(COOKIE, g.token)
        yield client, g


@pytest.fixture(scope="module")
def ids(served: tuple[TestClient, Gallery]) -> dict[str, int]:
    """File name -> index id, read back through the API."""
    client, _ = served
    body = client.get("/api/search", params={"limit": 200}).json()
    return {r["name"]: r["id"] for r in body["results"]}


def _names(body: dict[str, object]) -> list[str]:
    return [r["name"] for r in body["results"]]  # type: ignore[attr-defined, index]


# --- security: one test each --------------------------------------------------------------------


def test_default_bind_is_localhost_and_another_host_warns(library: tuple[Path, Path]) -> None:
    """A real `clipsearch serve`: loopback by default, reachable with its token; --host warns."""
    import httpx

    with gallery.serve(library[1]) as server:
        assert server.base.startswith("http://127.0.0.1:")
        assert not any("warning" in line for line in server.lines)
        r = httpx.get(server.url, follow_redirects=True, timeout=30)
        assert r.status_code == 200 and "clipsearch" in r.text
        # The cookie is named after the port: a second gallery on this machine keeps its own.
        port = server.base.rsplit(":", 1)[1]
        assert r.history[0].headers["set-cookie"].startswith(f"clipsearch_token_{port}=")
        assert httpx.get(server.base + "/api/status", timeout=30).status_code == 401
    with gallery.serve(library[1], "--host", "0.0.0.0") as server:
        assert any("warning" in line and "0.0.0.0" in line for line in server.lines)


def test_every_request_needs_the_token(library: tuple[Path, Path]) -> None:
    with _client(library[1]) as (client, g):
        for path in ("/", "/api/status", "/api/search?q=red", "/api/photo/1/thumb", "/static/app.js",
                     "/api/events"):
            assert client.get(path).status_code == 401, path
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # The first visit trades the token for a cookie and drops it from the address bar.
        r = client.get(f"/?token={g.token}&x=1", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?x=1"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/api/status").status_code == 200  # the client kept the cookie
        client.cookies.clear()
        assert client.get("/api/status").status_code == 401
        assert client.get("/api/status", headers={"Authorization": f"Bearer {g.token}"}).status_code == 200


def test_host_header_is_checked_against_dns_rebinding(served: tuple[TestClient, Gallery]) -> None:
    client, _ = served
    assert client.get("/api/status", headers={"Host": "evil.example:8765"}).status_code == 403
    assert client.get("/api/status", headers={"Host": "localhost.evil.example"}).status_code == 403
    for ok in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765"):
        assert client.get("/api/status", headers={"Host": ok}).status_code == 200, ok
    assert host_allowed("192.168.1.20:8765") and host_allowed("photos.lan", ["photos.lan"])
    assert not host_allowed("") and not host_allowed("photos.lan")


def test_no_cors(served: tuple[TestClient, Gallery]) -> None:
    client, _ = served
    pre = client.options("/api/trash", headers={"Origin": "https://evil.example",
                                                "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 405
    r = client.get("/api/search", params={"q": "red"}, headers={"Origin": "https://evil.example"})
    for response in (pre, r):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_state_changing_requests_need_the_csrf_token(served: tuple[TestClient, Gallery], ids: dict[str, int]) -> None:
    client, g = served
    body = {"ids": [ids["red-circle copy.png"]], "confirm": True}
    for path in ("/api/trash", "/api/index", "/api/tag", f"/api/photo/{ids['red-circle copy.png']}/reveal",
                 "/api/search/image"):
        assert client.post(path, json=body).status_code == 403, path
        assert client.post(path, json=body, headers={"X-CSRF-Token": "0" * 64}).status_code == 403, path
        # The right token from another site's page is still refused.
        assert client.post(path, json=body, headers={"X-CSRF-Token": csrf_for(g.token),
                                                     "Origin": "https://evil.example"}).status_code == 403, path
    # With the token the request reaches the route: here, the refusal for a missing confirmation.
    r = client.post("/api/trash", json={"ids": body["ids"]}, headers={"X-CSRF-Token": csrf_for(g.token),
                                                                     "Origin": BASE})
    assert r.status_code == 400 and "confirmation" in r.json()["error"]
    assert (library_file := Path(client.get(f"/api/photo/{body['ids'][0]}").json()["path"])).exists(), library_file


def test_strict_content_security_policy(served: tuple[TestClient, Gallery], ids: dict[str, int]) -> None:
    client, _ = served
    page = client.get("/")
    for r in (page, client.get("/api/status"), client.get("/static/app.js"),
              client.get(f"/api/photo/{ids['red-square-0.png']}/thumb"), client.get("/api/photo/999999")):
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    # The page works under that policy: no inline script, style or event handler, nothing from elsewhere.
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "<style" not in html and not re.search(r"\son[a-z]+=", html) and "style=" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    js = client.get("/static/app.js").text
    assert "innerHTML" not in js and "eval(" not in js and "http://" not in js and "https://" not in js


def test_files_only_by_index_id(served: tuple[TestClient, Gallery], library: tuple[Path, Path],
                                tmp_path: Path) -> None:
    client, _ = served
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"TOP-SECRET-BYTES")
    attempts = [
        "/static/../app.py", "/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py", "/static/%2Fetc%2Fpasswd",
        "/static/app.js%00.py", f"/static/{secret}", "/api/photo/../../../etc/passwd",
        "/api/photo/..%2F..%2Fetc%2Fpasswd/original", "/api/photo/%2Fetc%2Fpasswd/original",
        f"/api/photo/{secret}/original", "/api/photo/1%2F..%2F2/original", "/api/photo/-1/original",
        "/api/photo/999999/original", f"/api/photo/1/original?path={secret}", f"/api/photo/1/view/{secret}",
        "/etc/passwd", f"/{secret}", "//etc/passwd", "/api/search?q=" + str(secret),
    ]
    for path in attempts:
        r = client.get(path)
        assert b"TOP-SECRET" not in r.content and b"root:" not in r.content, path
        if "/api/search" not in path and not path.endswith("?path=" + str(secret)):
            assert r.status_code in (400, 404), (path, r.status_code)
    # A path in the search box is not read as an example photo.
    r = client.get("/api/search", params={"q": str(secret)})
    assert r.status_code == 400 and "file path" in r.json()["error"]


def test_a_photo_swapped_for_a_symlink_is_not_served(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSEARCH_TEXT_MODEL", "off")
        photos = gallery.build(tmp_path / "photos", tmp_path / "index")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET-BYTES" * 100)
    target = photos / "shapes" / "green-star-0.png"
    with _client(tmp_path / "index") as (client, g):
        client.cookies.set(COOKIE, g.token)
        image_id = next(r["id"] for r in client.get("/api/search", params={"limit": 200}).json()["results"]
                        if r["name"] == target.name)
        assert client.get(f"/api/photo/{image_id}/original").content == target.read_bytes()
        target.unlink()
        target.symlink_to(secret)
        for kind in ("original", "view", "thumb"):
            r = client.get(f"/api/photo/{image_id}/{kind}")
            if kind == "thumb" and r.status_code == 200:  # the preview made from the indexed file is fine
                assert b"TOP-SECRET" not in r.content
                continue
            assert r.status_code == 404 and b"TOP-SECRET" not in r.content, kind
        assert client.get(f"/api/photo/{image_id}").json()["available"] is False


# --- features -----------------------------------------------------------------------------------


def test_text_search_finds_the_right_shapes_with_a_relevance_line(served: tuple[TestClient, Gallery]) -> None:
    client, _ = served
    body = client.get("/api/search", params={"q": "a photo of a red circle", "limit": 2}).json()
    assert set(_names(body)) == {"red-circle-0.png", "red-circle copy.png"}
    # Only the two red circles are relevant (the zero-shot decision, docs/search.md): nothing more.
    assert body["more"] is False and body["relevance"].startswith("2 results")
    # Query arithmetic as on the CLI: a green ring, minus green.
    minus = client.get("/api/search", params={"q": "a photo of a green ring - green", "limit": 5}).json()
    assert any(n.endswith("ring-0.png") and not n.startswith("green") for n in _names(minus))
    page1 = client.get("/api/search", params={"q": "a photo of a red circle", "limit": 1}).json()
    assert page1["more"] is True and page1["relevance"].startswith("1+ results")
    page2 = client.get("/api/search", params={"q": "a photo of a red circle", "limit": 1, "offset": 1}).json()
    assert page2["offset"] == 1 and set(_names(page1)) | set(_names(page2)) == set(_names(body))


def test_filters_and_sort(served: tuple[TestClient, Gallery], library: tuple[Path, Path]) -> None:
    client, _ = served
    photos = library[0]
    only_jpeg = client.get("/api/search", params={"q": "a blue star", "type": "jpg", "all": "1"}).json()
    assert _names(only_jpeg) == ["rotated.jpg"]
    copies = client.get("/api/search", params={"q": "a red circle", "folder": str(photos / "copies")}).json()
    assert _names(copies) == ["red-circle copy.png"]
    wide = client.get("/api/search", params={"q": "a blue star", "min_width": 100}).json()
    assert _names(wide) == []  # the rotated JPEG is stored 60 wide once upright; the shapes are 64
    tagged = client.get("/api/search", params={"q": "something red", "tag": "circle", "limit": 100, "all": "1"}).json()
    circles = client.get("/api/search", params={"tag": "circle", "limit": 100}).json()
    assert set(_names(tagged)) == set(_names(circles)) and len(_names(circles)) > 1
    future = client.get("/api/search", params={"q": "a red circle", "after": "2999-01-01"}).json()
    assert future["results"] == [] and future["nothing"]
    by_date = client.get("/api/search", params={"q": "a red circle", "sort": "date", "limit": 10}).json()
    dates = [r["date"] for r in by_date["results"]]
    assert dates == sorted(dates, reverse=True)
    assert client.get("/api/search", params={"q": "x", "after": "yesterday"}).status_code == 400


def test_photo_page_data(served: tuple[TestClient, Gallery], ids: dict[str, int]) -> None:
    client, _ = served
    info = client.get(f"/api/photo/{ids['rotated.jpg']}").json()
    assert info["camera"] == "Pentax K-1" and info["format"] == "jpeg" and info["available"]
    assert info["path"].endswith("camera/rotated.jpg") and info["tags"]
    # The picture comes upright: stored 120x60 with EXIF orientation 6.
    view = Image.open(io.BytesIO(client.get(f"/api/photo/{ids['rotated.jpg']}/view").content))
    thumb = Image.open(io.BytesIO(client.get(f"/api/photo/{ids['rotated.jpg']}/thumb").content))
    assert view.size == (60, 120) and thumb.size[0] < thumb.size[1]
    assert client.get("/api/photo/999999").status_code == 404


def test_more_like_this(served: tuple[TestClient, Gallery], ids: dict[str, int]) -> None:
    client, _ = served
    body = client.get("/api/search", params={"similar": ids["red-circle-0.png"], "limit": 3}).json()
    names = _names(body)
    assert names[0] == "red-circle copy.png" and "red-circle-0.png" not in names


def test_tags_with_counts(served: tuple[TestClient, Gallery]) -> None:
    client, _ = served
    tags = client.get("/api/tags").json()["tags"]
    assert {t["label"] for t in tags} <= {"circle", "square", "triangle", "star", "cross", "ring"}
    assert sum(t["count"] for t in tags) == 50  # each photo got its one best shape
    first = tags[0]
    page = client.get("/api/search", params={"tag": first["label"], "limit": 100}).json()
    assert len(page["results"]) == first["count"] and str(first["count"]) in page["relevance"]


def test_status(served: tuple[TestClient, Gallery], library: tuple[Path, Path]) -> None:
    client, _ = served
    st = client.get("/api/status").json()
    assert st["images"] == 50 and st["model_name"] == gallery.TINY_MODEL
    assert st["roots"] == [str(library[0])]  # the folder `index` was given, as the index recorded it
    assert [s["path"] for s in st["skipped_files"]] == [str(library[0] / "camera" / "broken.jpg")]
    assert st["skipped_files"][0]["reason"] == "corrupt or truncated"


def test_search_by_example_image(served: tuple[TestClient, Gallery], library: tuple[Path, Path]) -> None:
    client, g = served
    data = (library[0] / "shapes" / "yellow-triangle-0.png").read_bytes()
    r = client.post("/api/search/image", params={"limit": 3}, content=data,
                    headers={"X-CSRF-Token": csrf_for(g.token), "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert _names(body)[0] == "yellow-triangle-0.png"
    more = client.get("/api/search", params={"example": body["example"], "limit": 3, "offset": 3}).json()
    assert not set(_names(more)) & set(_names(body))


def test_duplicates_then_trash_updates_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import send2trash

    photos = gallery.build(tmp_path / "photos", tmp_path / "index")
    trash = tmp_path / "Trash"
    trash.mkdir()
    trashed: list[str] = []

    def fake_trash(path: str) -> None:  # the OS's trash: the file moves out, nothing is deleted
        trashed.append(path)
        shutil.move(path, trash / os.path.basename(path))

    monkeypatch.setattr(send2trash, "send2trash", fake_trash)
    with _client(tmp_path / "index") as (client, g):
        client.cookies.set(COOKIE, g.token)
        groups = client.get("/api/duplicates").json()["groups"]
        assert len(groups) == 1 and groups[0]["tier"] == "exact"
        keep = next(m for m in groups[0]["members"] if m["keep"])
        extra = next(m for m in groups[0]["members"] if not m["keep"])
        assert keep["name"] == "red-circle-0.png" and extra["name"] == "red-circle copy.png"
        r = client.post("/api/trash", json={"ids": [extra["id"]], "confirm": True},
                        headers={"X-CSRF-Token": csrf_for(g.token)})
        assert r.status_code == 200, r.text
        assert r.json()["trashed"] == [extra["id"]] and r.json()["removed_from_index"] == 1
        assert trashed == [str(photos / "copies" / "red-circle copy.png")]
        assert (trash / "red-circle copy.png").exists() and (photos / "shapes" / "red-circle-0.png").exists()
        assert client.get("/api/duplicates").json()["groups"] == []
        assert client.get(f"/api/photo/{extra['id']}").status_code == 404
        assert client.get("/api/status").json()["images"] == 49
        found = client.get("/api/search", params={"q": "a photo of a red circle", "limit": 3}).json()
        assert "red-circle copy.png" not in _names(found)


def test_live_events_report_an_index_run(tmp_path: Path) -> None:
    gallery.build(tmp_path / "photos", tmp_path / "index")
    with _client(tmp_path / "index") as (client, g):
        client.cookies.set(COOKIE, g.token)
        start = g.hub.last_id
        assert client.post("/api/index", headers={"X-CSRF-Token": csrf_for(g.token)}).status_code == 202
        events = []
        while not any(e.kind == "finished" for e in events):
            events = g.hub.wait(start, timeout=120)
            assert events, "no event from the index run"
        with client.stream("GET", "/api/events", params={"after": start, "seconds": 1}) as stream:
            text = "".join(stream.iter_text())
        assert "event: started" in text and "event: finished" in text
        finished = next(e for e in events if e.kind == "finished")
        assert finished.data["ok"] and finished.data["result"]["new"] == 0


def test_watch_indexes_new_and_deleted_photos(tmp_path: Path) -> None:
    import numpy as np
    import shapes

    photos = gallery.build(tmp_path / "photos", tmp_path / "index")
    roots = [str(photos / d) for d in ("shapes", "copies", "camera")]
    with _client(tmp_path / "index", watch_roots=roots) as (client, g):
        client.cookies.set(COOKIE, g.token)
        # A photo unlike any in the library: four crosses would be new; a big white star on its own is enough.
        new = photos / "shapes" / "new" / "white-star-new.png"
        new.parent.mkdir()
        shapes.render(np.random.default_rng(77), "white", "star", 1, "large").save(new)
        seen = g.hub.last_id
        while True:  # each finished index run is a chance; the test fails by timeout, never by a clock
            events = g.hub.wait(seen, timeout=60)
            assert events, "the watcher indexed nothing within a minute"
            seen = events[-1].id
            names = _names(client.get("/api/search", params={"q": "a photo of a white star", "limit": 5}).json())
            if "white-star-new.png" in names:
                break
        (photos / "copies" / "red-circle copy.png").unlink()
        while True:
            events = g.hub.wait(seen, timeout=60)
            assert events, "the watcher did not notice the deletion within a minute"
            seen = events[-1].id
            if client.get("/api/status").json()["images"] == 50:  # one new, one gone
                break
        assert client.get("/api/duplicates").json()["groups"] == []


def test_text_queries_stay_torch_free(tmp_path: Path, text_model_on: None) -> None:
    """In a fresh process the server answers a text query through the exported text tower only."""
    import subprocess
    import sys

    gallery.build(tmp_path / "photos", tmp_path / "index")
    code = f"""
import sys
from starlette.testclient import TestClient
from clipsearch.serve import Gallery, create_app
g = Gallery({str(tmp_path / 'index')!r}, model={gallery.TINY_MODEL!r})
with TestClient(create_app(g), base_url={BASE!r}) as c:
    c.cookies.set({COOKIE!r}, g.token)
    r = c.get('/api/search', params={{'q': 'a photo of a red circle', 'limit': 2}})
    assert r.status_code == 200, r.text
    assert {{x['name'] for x in r.json()['results']}} == {{'red-circle-0.png', 'red-circle copy.png'}}, r.json()
assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'the model was loaded'
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_serve_command_errors(tmp_path: Path, library: tuple[Path, Path]) -> None:
    import socket

    from click.testing import CliRunner

    from clipsearch.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--index", str(tmp_path / "nothing-here")])
    assert missing.exit_code == 3 and "no index" in missing.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = runner.invoke(app, ["serve", "--index", str(library[1]), "--port", str(taken.getsockname()[1])])
    assert busy.exit_code == 2 and "pick another --port" in busy.output
    bad_root = runner.invoke(app, ["serve", "--index", str(library[1]), "--watch", "--root", str(tmp_path / "nope")])
    assert bad_root.exit_code == 2 and "not a folder" in bad_root.output


def test_an_index_run_from_another_process_shows_up(tmp_path: Path) -> None:
    import numpy as np
    import shapes

    from clipsearch import Library

    photos = gallery.build(tmp_path / "photos", tmp_path / "index")
    with _client(tmp_path / "index") as (client, g):
        client.cookies.set(COOKIE, g.token)
        seen = g.hub.last_id
        new = photos / "shapes" / "extra-white-star.png"
        shapes.render(np.random.default_rng(8), "white", "star", 1, "large").save(new)
        Library(tmp_path / "index", model=gallery.TINY_MODEL).index([photos])  # as `clipsearch index` would
        changed = []
        while not changed:
            events = g.hub.wait(seen, timeout=60)
            assert events, "the gallery did not notice the other run"
            seen = events[-1].id
            changed = [e for e in events if e.kind == "changed"]
        assert changed[-1].data["images"] == 51
        names = _names(client.get("/api/search", params={"q": "a photo of a white star", "limit": 5}).json())
        assert "extra-white-star.png" in names


def test_reveal_in_folder_opens_the_file_manager(served: tuple[TestClient, Gallery], ids: dict[str, int],
                                                 library: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shutil_mod
    import subprocess
    import sys

    started: list[list[str]] = []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(shutil_mod, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd))  # the OS's file manager
    client, g = served
    r = client.post(f"/api/photo/{ids['rotated.jpg']}/reveal", headers={"X-CSRF-Token": csrf_for(g.token)})
    assert r.status_code == 200
    assert started == [["/usr/bin/xdg-open", str(library[0] / "camera")]]
