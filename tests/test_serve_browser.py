"""`clipsearch serve` in a real browser: Debian's Chromium driven by Playwright, against a real server process.

One server and one browser for the module. Skipped, saying why, when Chromium or Playwright is absent
(.ci/run installs both). Set CLIPSEARCH_SCREENSHOTS=FOLDER to also save the pages docs/serve.md shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'clipsearch[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

import gallery  # noqa: E402 - after the skips: nothing to build without a browser

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = os.environ.get("CLIPSEARCH_SCREENSHOTS")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[gallery.Server, Path, Path]]:
    """(server, photos folder, trash folder): the tiny model's shapes, indexed with the text tower."""
    root = tmp_path_factory.mktemp("browser-lib")
    env = {"HF_HUB_OFFLINE": "1", "CLIPSEARCH_TEXT_MODEL": "on", "CLIPSEARCH_HOME": str(root / "home"),
           # The real send2trash, with the user's trash redirected here: nothing else is faked.
           "XDG_DATA_HOME": str(root / "xdg")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        photos = gallery.build(root / "photos", root / "index")
    with gallery.serve(root / "index", env=env) as server:
        yield server, photos, root / "xdg" / "Trash"


@pytest.fixture(scope="module")
def page(site: tuple[gallery.Server, Path, Path]) -> Iterator[Any]:
    server = site[0]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        tab = context.new_page()
        tab.problems = []  # console errors and CSP violations: the page must cause none
        tab.on("console", lambda m: tab.problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.problems.append(str(e)))
        tab.goto(server.url)
        tab.wait_for_selector("#q")
        yield tab
        context.close()
        browser.close()


def _tile_names(page: Any, grid: str = "#grid") -> list[str]:
    return page.eval_on_selector_all(f"{grid} .tile img", "els => els.map(e => e.alt)")


def _shot(page: Any, name: str) -> None:
    """A screenshot for the docs, in 128 colours: the noisy test pictures make full-colour PNGs large."""
    if SHOTS:
        import io

        from PIL import Image

        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        shot.quantize(128, method=Image.Quantize.MEDIANCUT).save(Path(SHOTS) / name, optimize=True)


def test_token_left_the_address_bar(page: Any) -> None:
    assert "token=" not in page.url


def test_type_a_query_and_see_the_right_thumbnails(page: Any) -> None:
    page.fill("#q", "a photo of a red circle")
    # "N results · …" is a query's line; the page opened on "50 photos, newest photos first".
    page.wait_for_function("() => document.querySelector('#relevance').textContent.includes('results')")
    names = _tile_names(page)
    assert set(names[:2]) == {"red-circle-0.png", "red-circle copy.png"}, names
    assert "q=a+photo+of+a+red+circle" in page.url  # the search is in the URL: back and reload work
    # Thumbnails really load (served by id through the guard).
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].slice(0, 2)"
                           ".every(i => i.naturalWidth > 0)")
    page.fill("#q", "a photo of a blue triangle")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt === 'blue-triangle-0.png'")
    page.fill("#q", "a photo of a red circle")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt.startsWith('red-circle')")
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].slice(0, 12).every(i => i.complete)")
    _shot(page, "serve-search.png")


def test_only_the_relevant_photos_then_all_of_them_on_request(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/?q=a+photo+of+a+red+circle")
    page.wait_for_function("() => /^2 results/.test(document.querySelector('#relevance').textContent)")
    assert set(_tile_names(page)) == {"red-circle-0.png", "red-circle copy.png"}
    page.click("#relevance .show-all")  # the CLI's --min-score -1, as a link
    page.wait_for_function("() => document.querySelectorAll('#grid .tile').length > 2")
    assert "all=1" in page.url and set(_tile_names(page)[:2]) == {"red-circle-0.png", "red-circle copy.png"}


def test_more_results_load_on_scroll(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/?q=a+photo+of+a+red+circle&all=1&limit=6")
    # Pages of 6 (the relevance line says "12+ results" while there are more), loaded to fill the screen.
    page.wait_for_function("() => /^\\d+\\+ results/.test(document.querySelector('#relevance').textContent)"
                           " && document.querySelectorAll('#grid .tile').length > 6")
    for _ in range(20):
        if page.locator("#grid .tile").count() == 50:
            break
        page.locator("#more").scroll_into_view_if_needed()  # as a user scrolling to the end of the grid
        page.wait_for_timeout(300)
    names = _tile_names(page)
    assert len(names) == 50 and len(set(names)) == 50  # every photo once: all=1 shows them all in score order
    assert set(names[:2]) == {"red-circle-0.png", "red-circle copy.png"}
    page.goto(page.url.split("#")[0] + "#/?q=a+photo+of+a+red+circle")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt.startsWith('red-circle')")


def test_drop_a_photo_to_search_by_example(page: Any, site: tuple[gallery.Server, Path, Path]) -> None:
    import base64

    data = base64.b64encode((site[1] / "shapes" / "yellow-triangle-0.png").read_bytes()).decode()
    page.goto(page.url.split("#")[0] + "#/")
    # What the browser hands the page when a file is dropped on it: a drop event carrying the file.
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "query.png", { type: "image/png" }));
        return dt;
    }""", data)
    page.dispatch_event("body", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#example:not([hidden])")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt === 'yellow-triangle-0.png'",
                           timeout=120_000)  # the first image query loads the model in the server
    page.click("#example-clear")
    page.wait_for_selector("#example", state="hidden")


def test_open_a_photo_and_more_like_this(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/?q=a+photo+of+a+red+circle")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt.startsWith('red-circle')"
                           " && document.querySelector('#relevance').textContent.includes('results')")
    page.click("#grid .tile >> nth=0")
    page.wait_for_selector("#view-photo:not([hidden])")
    page.wait_for_function("() => document.querySelector('#photo-name').textContent.startsWith('red-circle')")
    assert page.text_content("#photo-path").endswith(".png")
    assert page.is_visible("#copy-path")
    page.wait_for_function("() => document.querySelector('#photo-img').naturalWidth > 0")
    page.wait_for_function("() => document.querySelectorAll('#similar-grid .tile').length > 0")
    similar = _tile_names(page, "#similar-grid")
    opened = page.text_content("#photo-name")
    assert opened not in similar and similar[0].startswith("red-circle"), similar
    _shot(page, "serve-photo.png")
    page.click("#copy-path")
    page.wait_for_selector("#toast:not([hidden])")


def test_a_tag_page(page: Any) -> None:
    page.goto(page.url.split("#")[0] + "#/tags")
    page.wait_for_selector("#tag-cloud a")
    first = page.locator("#tag-cloud a").first
    label, count = first.locator("span").nth(0).text_content(), int(first.locator(".n").text_content())
    first.click()
    page.wait_for_function(f"() => document.querySelector('#relevance').textContent.startsWith('{count} photos')")
    assert len(_tile_names(page)) == count
    assert page.input_value("#f-tag") == label
    page.goto(page.url.split("#")[0] + "#/tags")
    page.wait_for_selector("#tag-cloud a")
    _shot(page, "serve-tags.png")


def test_duplicates_flow_moves_the_copy_to_the_trash(page: Any, site: tuple[gallery.Server, Path, Path]) -> None:
    _, photos, trash = site
    copy = photos / "copies" / "red-circle copy.png"
    page.goto(page.url.split("#")[0] + "#/duplicates")
    page.wait_for_selector(".group .member")
    keeper = page.locator(".member.keep")
    assert keeper.count() == 1 and "red-circle-0.png" in keeper.text_content()
    assert page.locator(".member.chosen").count() == 1  # the suggested copy, ticked; the keeper not
    _shot(page, "serve-duplicates.png")
    page.click("#dup-trash")
    page.wait_for_selector("#modal:not([hidden])")
    page.click("#modal-cancel")  # nothing happens without the explicit confirmation
    assert copy.exists() and page.is_hidden("#modal")
    page.click("#dup-trash")
    page.click("#modal-ok")
    page.wait_for_function("() => document.querySelector('#toast').textContent.includes('moved to the trash')")
    page.wait_for_selector("text=No duplicates found.")
    assert not copy.exists() and (photos / "shapes" / "red-circle-0.png").exists()
    assert (trash / "files" / copy.name).exists()
    assert re.search(r"Path=.*red-circle%20copy\.png", (trash / "info" / f"{copy.name}.trashinfo").read_text())
    page.goto(page.url.split("#")[0] + "#/?q=a+photo+of+a+red+circle")
    page.wait_for_function("() => document.querySelector('#grid .tile img')?.alt === 'red-circle-0.png'")
    assert "red-circle copy.png" not in _tile_names(page)


def test_status_page(page: Any, site: tuple[gallery.Server, Path, Path]) -> None:
    page.goto(page.url.split("#")[0] + "#/status")
    page.wait_for_function("() => document.querySelector('#status-meta').textContent.includes('Photos')")
    text = page.text_content("#status-meta")
    assert "49" in text and "tiny-clip" in text and "fast (no model loaded)" in text
    assert "broken.jpg" in page.text_content("#skipped")
    _shot(page, "serve-status.png")


def test_the_page_caused_no_errors(page: Any) -> None:
    assert page.problems == []
