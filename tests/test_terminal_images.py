"""Inline previews: protocol detection and what is drawn for each protocol."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from clipsearch import Library
from clipsearch.cli import app, terminal_images


def test_protocol_detection() -> None:
    assert terminal_images.protocol({"TERM": "xterm-kitty"}) == "kitty"
    assert terminal_images.protocol({"KITTY_WINDOW_ID": "1"}) == "kitty"
    assert terminal_images.protocol({"TERM_PROGRAM": "iTerm.app"}) == "iterm"
    assert terminal_images.protocol({"TERM": "xterm-256color"}) == "blocks"


def test_half_blocks_carry_the_pixels(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 20, 40, 40))  # top half red, bottom half blue
    path = tmp_path / "rb.png"
    img.save(path)
    text = terminal_images.blocks(path, cols=4)
    lines = text.plain.splitlines()
    assert lines == ["▀▀▀▀", "▀▀▀▀"]
    styles = {str(span.style) for span in text.spans}
    assert styles == {"rgb(255,0,0) on rgb(255,0,0)", "rgb(0,0,255) on rgb(0,0,255)"}


def test_kitty_and_iterm_escapes_carry_a_png(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    Image.effect_noise((300, 300), 80).convert("RGB").save(path)
    kitty = terminal_images.kitty(path, cols=20)
    chunks = re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", kitty)
    assert chunks[0][0].startswith("f=100,a=T,c=20,m=1") and chunks[-1][0] == "m=0"
    assert all(len(data) <= 4096 for _, data in chunks)
    assert base64.b64decode("".join(d for _, d in chunks)).startswith(b"\x89PNG")
    iterm = terminal_images.iterm(path, cols=20)
    assert iterm.startswith("\x1b]1337;File=inline=1;width=20;") and iterm.endswith("\x07\n")


def test_preview_in_a_pipe_falls_back_to_plain_lines(photo_dir: Path) -> None:
    Library().index([photo_dir])
    result = CliRunner().invoke(app, ["query", "a photo of a red circle", "-n", "2", "--preview", "--min-score", "-1"])
    assert result.exit_code == 0 and "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 2
