"""`tag` (zero-shot tags, and `tag learn`/`tag forget` for personal ones) and `tags` (what there is)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from click_default_group import DefaultGroup

from clipsearch.cli.common import RichProgress, err, escape, fail, handles_errors, library, out, print_json
from clipsearch.cli.options import PATH, index_option, json_option, model_option
from clipsearch.cli.render import plural


class _TagGroup(DefaultGroup):
    """`clipsearch tag [PATHS]` tags; `clipsearch tag learn|forget …` are subcommands.

    Its help is the tagging command's own (its options are what people look for), followed by the
    subcommands. A folder named like a subcommand is reached as `clipsearch tag ./learn`.
    """

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        default = self.commands[str(self.default_cmd_name)]
        sub = click.Context(default, info_name=ctx.info_name, parent=ctx.parent)
        default.format_help(sub, formatter)
        rows = [(name, cmd.get_short_help_str(80)) for name, cmd in self.commands.items()
                if name != self.default_cmd_name]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_TagGroup, default="apply", default_if_no_args=True)
def tag() -> None:
    """Tag photos zero-shot from label texts, or learn personal tags from examples."""


@tag.command("apply")
@click.argument("paths", type=PATH, nargs=-1)
@click.option("--labels", "labels_file", type=PATH,
              help="Label file: one per line, 'label: variant; variant' for extra phrasings.")
@click.option("--label", multiple=True, help="A label (repeatable); replaces the built-in vocabulary.")
@click.option("--templates", "template_set", type=click.Choice(["photo", "imagenet", "none"]), default="photo",
              show_default=True, help="Prompt templates to average: photo (short), imagenet (the CLIP paper's 80), "
              "none.")
@click.option("--top", type=int, default=5, show_default=True, help="At most this many tags per photo.")
@click.option("--threshold", type=float,
              help="A fixed cosine for every label instead of per-label calibration (docs/zero_shot.md).")
@click.option("--write-xmp", is_flag=True, help="Also write the tags to XMP sidecars (photo.jpg.xmp) for photo "
              "managers.")
@click.option("--clear-xmp", is_flag=True, help="Remove clipsearch's tags from XMP sidecars (other keywords stay).")
@click.option("--dry-run", is_flag=True,
              help="Compute and report; write neither tags nor sidecars (new photos are still indexed).")
@click.option("--wait", is_flag=True, help="Wait for a running index to finish instead of exiting with code 3.")
@json_option
@index_option
@model_option
@handles_errors
def tag_apply(paths: tuple[Path, ...], labels_file: Path | None, label: tuple[str, ...], template_set: str,
              top: int, threshold: float | None, write_xmp: bool, clear_xmp: bool, dry_run: bool, wait: bool,
              as_json: bool, index_path: Path | None, model: str | None) -> None:
    """Tag photos zero-shot from label texts; a photo gets every label that clearly fits, or none.

    PATHS are folders or photos to tag (indexed first) [default: the whole index]. Personal tags
    learnt with `clipsearch tag learn` are applied too.
    """
    from clipsearch.tags import zero_shot

    if clear_xmp and (write_xmp or labels_file or label or threshold is not None):
        raise fail("--clear-xmp only removes clipsearch's tags from sidecars; it takes no --write-xmp, labels "
                   "or --threshold", 2)
    chosen: list[Any] | None
    if labels_file is not None:
        try:
            text = labels_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise fail(f"{labels_file} is not UTF-8 text", 2) from None
        except OSError as exc:
            raise fail(f"cannot read {labels_file}: {exc.strerror}", 2) from None
        chosen = zero_shot.parse_labels(text)
    elif label:
        chosen = zero_shot.parse_labels("\n".join(label))
    else:
        chosen = None
    lib = library(index_path, model)
    progress = RichProgress(as_json, verb="tagging")
    with progress.progress:
        summary = lib.tag(paths, labels=chosen, template_set=template_set, top=top, threshold=threshold,
                          write_xmp=write_xmp, clear_xmp=clear_xmp, dry_run=dry_run, wait=wait, progress=progress)
    if as_json:
        print_json(summary.as_dict())
        return
    if clear_xmp:
        err.print(f"{'would clear' if dry_run else 'cleared'} clipsearch's tags from {summary.sidecars_changed} of "
                  f"{summary.photos} XMP sidecars (the index keeps its tags; other keywords stay)", markup=False)
        for problem in summary.sidecar_errors or []:
            err.print(f"[yellow]skipped sidecar:[/] {escape(problem)}")
        return
    top_counts = ", ".join(f"{k} {v}" for k, v in list(summary.counts.items())[:12])
    verb = "would tag" if dry_run else "tagged"
    err.print(f"{verb} {summary.tagged} of {plural(summary.photos, 'photo')} with {len(summary.counts)} of "
              f"{plural(summary.labels, 'label')} ({summary.method} thresholds)"
              f"{': ' + top_counts if top_counts else ''}", markup=False)
    if write_xmp or clear_xmp:
        err.print(f"{'would change' if dry_run else 'changed'} {plural(summary.sidecars_changed, 'XMP sidecar')}",
                  markup=False)
        for problem in summary.sidecar_errors or []:
            err.print(f"[yellow]skipped sidecar:[/] {escape(problem)}")


@tag.command("learn")
@click.argument("name")
@click.option("--examples", "-e", type=PATH, multiple=True, required=True,
              help="Example photos or folders of them (repeatable).")
@click.option("--negatives", type=PATH, multiple=True,
              help="Photos that are NOT it (repeatable) [default: a sample of the index].")
@click.option("--no-text", is_flag=True,
              help="Do not use NAME as a text prior (for names CLIP cannot know, like 'Rex').")
@index_option
@model_option
@handles_errors
def tag_learn(name: str, examples: tuple[Path, ...], negatives: tuple[Path, ...], no_text: bool,
              index_path: Path | None, model: str | None) -> None:
    """Learn a personal tag from a few example photos; `clipsearch tag` applies it from then on.

    NAME is the tag, like "our dog Rex"; it doubles as a text hint unless --no-text is given.
    """
    lib = library(index_path, model)
    probe = lib.learn(name, examples, negatives=negatives, use_text=not no_text)
    err.print(f"learnt {probe.name!r} from {probe.examples} example(s); run `clipsearch tag` to apply it",
              markup=False)


@tag.command("forget")
@click.argument("name")
@index_option
@handles_errors
def tag_forget(name: str, index_path: Path | None) -> None:
    """Forget personal tag NAME and remove it from every photo."""
    if not library(index_path).forget(name):
        raise fail(f"no personal tag named {name!r}", 2)
    err.print(f"forgot {name!r}", markup=False)


@click.group(invoke_without_command=True)
@json_option
@index_option
@click.pass_context
@handles_errors
def tags(ctx: click.Context, as_json: bool, index_path: Path | None) -> None:
    """Tags in the index with how many photos carry each; `tags export` prints every tag."""
    if ctx.invoked_subcommand is not None:
        return
    counts = library(index_path).tag_counts()
    if as_json:
        print_json([{"label": lab, "source": src, "photos": n} for lab, src, n in counts])
        return
    if not counts:
        err.print("no tags yet; `clipsearch tag` adds them", markup=False)
        return
    from rich.cells import cell_len

    wide = max(cell_len(lab) for lab, _, _ in counts)
    out.print(f"[bold]{'photos':>7}  {'tag'.ljust(wide)}  source[/]")
    for lab, src, n in counts:
        out.print(f"{n:>7}  {escape(lab)}{' ' * (wide - cell_len(lab))}  [dim]{src}[/]")


@tags.command("export")
@click.option("--format", "-f", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv or json.")
@index_option
@handles_errors
def tags_export(fmt: str, index_path: Path | None) -> None:
    """Print every tag of every photo (path, label, score, source), for spreadsheets and scripts."""
    import csv
    import json

    rows = library(index_path).all_tags()
    if fmt == "json":
        sys.stdout.write(json.dumps([{"path": p, "label": lab, "score": round(s, 6), "source": src}
                                     for p, lab, s, src in rows], ensure_ascii=False, indent=1) + "\n")
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "label", "score", "source"])
        writer.writerows((p, lab, f"{s:.6f}", src) for p, lab, s, src in rows)
