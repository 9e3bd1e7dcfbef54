"""Usage errors in the documented form: `error: …` in lower case, like every other error, with a hint
where a common mistake is likely (a query that starts with '-'); help text wrapped between words."""

from __future__ import annotations

import io
import sys
from typing import Any

import click
import click.formatting

_click_wrap = click.formatting.wrap_text
_HYPHEN = "\ue000"  # a private-use character: textwrap sees a letter where there was a hyphen


def _wrap_between_words(text: str, *args: Any, **kwargs: Any) -> str:
    """click's help wrapping, but never inside a word: "--no-text" split as "--no-" / "text" reads as
    two things. Hyphens stand in as a letter while wrapping (same width), then come back."""
    return _click_wrap(text.replace("-", _HYPHEN), *args, **kwargs).replace(_HYPHEN, "-")


# click's HelpFormatter looks wrap_text up in its module on each call: help wraps our way from here on.
click.formatting.wrap_text = _wrap_between_words


def run_group(group: click.Group, main: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """`group.main`, its usage errors shown our way. `main` is click's own (the unbound super method)."""
    if not kwargs.pop("standalone_mode", True):
        return main(group, *args, standalone_mode=False, **kwargs)
    try:
        code = main(group, *args, standalone_mode=False, **kwargs)
    except click.ClickException as exc:
        show(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def show(exc: click.ClickException) -> None:
    """What click would print, with its `Error:` in the documented `error:` form, and our hints."""
    buffer = io.StringIO()
    exc.show(file=buffer)
    text = buffer.getvalue()
    text = text.replace("\nError: ", "\nerror: ")
    if text.startswith("Error: "):
        text = "error: " + text[len("Error: "):]
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.NoSuchOption) and ctx is not None and ctx.command.name in ("query", "tag", "apply"):
        text += ("hint: a query (or label) that starts with '-' goes after `--`, which ends the options: "
                 f"clipsearch {ctx.command.name if ctx.command.name != 'apply' else 'tag'} -- \"-red\"\n")
    sys.stderr.write(text)
