"""The command line through click's CliRunner: help everywhere, outputs, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from clipsearch import config
from clipsearch.cli import app

runner = CliRunner()


def _commands(cmd: Any, prefix: str = "clipsearch") -> list[tuple[str, Any]]:
    found = [(prefix, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            # `tag apply` is what plain `clipsearch tag` runs; its help is `clipsearch tag --help`.
            found += _commands(sub, prefix if (prefix, name) == ("clipsearch tag", "apply") else f"{prefix} {name}")
    return found


ALL_COMMANDS = _commands(app)


def test_the_command_tree_is_what_docs_describe() -> None:
    names = {name for name, _ in ALL_COMMANDS}
    assert {"clipsearch index", "clipsearch query", "clipsearch status", "clipsearch models list",
            "clipsearch models download", "clipsearch models info"} <= names


@pytest.mark.parametrize(("name", "cmd"), ALL_COMMANDS, ids=[n for n, _ in ALL_COMMANDS])
def test_every_command_and_option_has_help(name: str, cmd: Any) -> None:
    assert (cmd.help or "").strip(), f"{name} has no help text"
    result = runner.invoke(app, [*name.split()[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    for param in cmd.params:
        if param.name == "help":
            continue
        if isinstance(param, click.Argument):  # click arguments are explained in the command's text
            assert param.human_readable_name in result.output.split("Options:")[0], f"{name}: {param.name}"
        else:
            assert (getattr(param, "help", "") or "").strip(), f"{name}: {param.name} has no help text"


def test_every_command_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    for name, _ in ALL_COMMANDS[1:]:
        assert f"`{name}" in doc, f"{name} missing from docs/cli.md"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("clipsearch ")


def test_index_then_query_in_every_format(photo_dir: Path) -> None:
    result = runner.invoke(app, ["index", str(photo_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["new"] == 48 and summary["total_indexed"] == 48

    table = runner.invoke(app, ["query", "a photo of a red circle", "-n", "3", "--format", "table"])
    assert table.exit_code == 0 and "red-circle" in table.stdout and "score" in table.stdout

    # One photo per class: the red circle is the only relevant one; --min-score -1 shows the top N.
    assert len(runner.invoke(app, ["query", "a photo of a red circle", "-n", "3"]).stdout.splitlines()) == 1
    plain = runner.invoke(app, ["query", "a photo of a red circle", "-n", "3", "--min-score", "-1"])
    first = plain.stdout.splitlines()[0].split("\t")
    assert len(plain.stdout.splitlines()) == 3 and first[1].endswith("red-circle-0.png")
    assert 0 < float(first[0]) <= 1

    paths = runner.invoke(app, ["query", "a photo of a blue star", "-n", "2", "-f", "paths"])
    assert paths.stdout.splitlines()[0] == str(photo_dir / "all" / "blue-star-0.png")

    as_json = json.loads(runner.invoke(app, ["query", "a photo of a blue star", "-n", "2", "--json",
                                             "--min-score", "-1"]).stdout)
    assert as_json["schema_version"] == 1
    assert as_json["query"]["terms"] == [{"kind": "text", "value": "a photo of a blue star", "weight": 1.0}]
    assert [r["rank"] for r in as_json["results"]] == [1, 2]

    lines = runner.invoke(app, ["query", "a photo of a blue star", "-n", "4", "-f", "jsonl", "--min-score",
                                "-1"]).stdout.splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["path"].endswith("blue-star-0.png")

    nul = runner.invoke(app, ["query", "a photo of a blue star", "-n", "3", "-0", "--min-score", "-1"]).stdout
    assert nul.count("\0") == 3 and nul.split("\0")[0].endswith("blue-star-0.png")


def test_image_query_by_option_and_by_path(photo_dir: Path) -> None:
    runner.invoke(app, ["index", str(photo_dir), "-q"])
    target = photo_dir / "all" / "purple-triangle-0.png"
    for args in (["--image", str(target)], [str(target)]):
        result = runner.invoke(app, ["query", *args, "-n", "1", "-f", "paths"])
        assert result.exit_code == 0 and result.stdout.strip() == str(target)


def test_status_and_models_list(photo_dir: Path) -> None:
    runner.invoke(app, ["index", str(photo_dir), "-q"])
    st = runner.invoke(app, ["status"])
    assert st.exit_code == 0 and "photos:       48" in st.stdout and "tiny-clip" in st.stdout
    st_json = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert st_json["images"] == 48 and st_json["model"]["embed_dim"] == 64
    models = runner.invoke(app, ["models", "list"])
    assert models.exit_code == 0 and config.DEFAULT_MODEL in models.stdout and "72.8%" in models.stdout
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert any(m["default"] and not m["cached"] for m in listed)
    # In a pipe the table is as wide as it is: every model name whole, to copy into --model.
    assert all(m["name"] in models.stdout for m in listed)


def test_models_info_for_the_tiny_model() -> None:
    result = runner.invoke(app, ["models", "info", "--json"])
    info = json.loads(result.stdout)
    assert info["kind"] == "local-dir" and info["weights"].endswith("open_clip_model.safetensors")
    assert len(info["weights_sha256"]) == 64 and info["device"] == "cpu"


def test_exit_codes(photo_dir: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["query", "anything", "--index", str(tmp_path / "nowhere")])
    assert missing.exit_code == 3 and "no index" in missing.stderr
    assert "Traceback" not in missing.output

    runner.invoke(app, ["index", str(photo_dir), "-q"])
    empty = runner.invoke(app, ["query", "   "])
    assert empty.exit_code == 2 and "the query is empty" in empty.stderr

    no_path = runner.invoke(app, ["index", str(tmp_path / "does-not-exist")])
    assert no_path.exit_code == 2 and "no such file or folder" in no_path.stderr

    other = runner.invoke(app, ["query", "a dog", "--model", config.DEFAULT_MODEL])
    assert other.exit_code == 4 and "was built with" in other.stderr

    offline = runner.invoke(app, ["index", str(photo_dir), "--index", str(tmp_path / "new"),
                                  "--model", config.DEFAULT_MODEL])
    assert offline.exit_code == 4 and "clipsearch models download" in offline.stderr
    assert len(offline.stderr.strip().splitlines()) == 1


def test_error_is_one_line_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--index", str(tmp_path / "none")])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_a_mistyped_folder_creates_no_index(tmp_path: Path) -> None:
    result = runner.invoke(app, ["index", str(tmp_path / "typo"), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2 and not (tmp_path / "idx").exists()
