"""Inline previews for `query --preview`: the kitty and iTerm2 image protocols, half blocks elsewhere.

Builds what to print; the cli package prints it. Imported only when --preview is asked for.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from rich.text import Text


def protocol(env: Mapping[str, str] | None = None) -> str:
    """"kitty", "iterm" or "blocks", from what the terminal says about itself."""
    env = os.environ if env is None else env
    if env.get("KITTY_WINDOW_ID") or env.get("TERM", "") == "xterm-kitty" or env.get("TERM_PROGRAM") == "WezTerm":
        return "kitty"
    if env.get("TERM_PROGRAM") == "iTerm.app" or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    return "blocks"


def _png(path: Path, max_px: int) -> bytes:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    rgb.save(buf, "PNG")
    return buf.getvalue()


def kitty(path: Path, cols: int) -> str:
    """The kitty graphics protocol: a PNG sent in 4 KiB base64 chunks, displayed `cols` cells wide."""
    data = base64.b64encode(_png(path, 512)).decode("ascii")
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = 1 if n < len(chunks) - 1 else 0
        head = f"f=100,a=T,c={cols},m={more}" if n == 0 else f"m={more}"
        out.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(out) + "\n"


def iterm(path: Path, cols: int) -> str:
    """iTerm2's inline image escape (OSC 1337)."""
    data = base64.b64encode(_png(path, 512)).decode("ascii")
    return f"\x1b]1337;File=inline=1;width={cols};preserveAspectRatio=1:{data}\x07\n"


def blocks(path: Path, cols: int) -> Text:
    """Two pixels per character cell with '▀': the top pixel as foreground, the bottom as background."""
    with Image.open(path) as img:
        rows = max(1, round(img.height / img.width * cols / 2))  # terminal cells are about twice as tall
        small = img.convert("RGB").resize((cols, rows * 2), Image.Resampling.BOX)
    px = np.asarray(small, dtype=np.uint8)
    text = Text()
    for y in range(0, rows * 2, 2):
        for x in range(cols):
            (r1, g1, b1), (r2, g2, b2) = px[y, x], px[y + 1, x]
            text.append("▀", style=f"rgb({r1},{g1},{b1}) on rgb({r2},{g2},{b2})")
        text.append("\n")
    return text
