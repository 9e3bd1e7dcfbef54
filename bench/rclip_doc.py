"""The docs/benchmarks.md section of bench_rclip.py, rendered from bench/results/rclip.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADING = "## End to end against rclip 3.3.0 (issue 22, bench/bench_rclip.py)"
TOOLS = ("rclip", "clipsearch")


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def _ratio(rounds: list[dict[str, Any]], value: Any) -> float:
    return min(value(r["clipsearch"]) for r in rounds) / min(value(r["rclip"]) for r in rounds)


def _row(label: str, rounds: list[dict[str, Any]], value: Any, fmt: str) -> str:
    """A table row: each tool's best (and range) over the rounds, best ÷ best, and each round's ratio."""
    per = {t: [value(r[t]) for r in rounds] for t in TOOLS}
    best = {t: min(v) for t, v in per.items()}
    ratio = best["clipsearch"] / best["rclip"]
    rounds_ratio = [c / r for c, r in zip(per["clipsearch"], per["rclip"], strict=True)]
    verdict = "faster" if ratio < 1 else "slower"
    if "RSS" in label:
        verdict = "less" if ratio < 1 else "more"
    return (f"| {label} | {fmt.format(best['rclip'])} ({_span(per['rclip'], fmt)}) | "
            f"{fmt.format(best['clipsearch'])} ({_span(per['clipsearch'], fmt)}) | **{ratio:.2f}** ({verdict}) | "
            f"{_span(rounds_ratio, '{:.2f}')} |")


def section(data: dict[str, Any]) -> str:
    rounds, m, v, ex = data["rounds"], data["machine"], data["versions"], data["export"]
    n, k = data["phone"], data["camera"]
    loads = [x["load_1min"] for r in rounds for t in TOOLS for x in r[t].values()]
    peak = lambda res: max(x["peak_rss_mb"] for x in res.values())  # noqa: E731 - one-line table helper
    specs = [
        (f"first index, {n} phone photos (4032x3024)", lambda res: res["phone"]["wall_s"], "{:.1f} s"),
        (f"first index, {k} camera photos (6000x4000)", lambda res: res["camera"]["wall_s"], "{:.1f} s"),
        ("index run with 1 new photo", lambda res: res["new"]["wall_s"], "{:.2f} s"),
        ("peak RSS while indexing (largest of the three runs)", peak, "{:.0f} MB"),
    ]
    rows = [_row(label, rounds, value, fmt) for label, value, fmt in specs]
    met = [label for label, value, _ in specs if _ratio(rounds, value) < 1]
    unmet = [label for label, value, _ in specs if _ratio(rounds, value) >= 1]
    verdict = ("Issue 22's target, clipsearch ahead of rclip on every row: "
               + (f"met on {'; '.join(met)}" if met else "met on no row")
               + (f"; **not met** on {'; '.join(unmet)}." if unmet else "."))
    per_run = []
    for scenario, label in (("phone", f"{n} phone"), ("camera", f"{k} camera"), ("new", "1 new")):
        rss = {t: _span([r[t][scenario]["peak_rss_mb"] for r in rounds], "{:.0f}") for t in TOOLS}
        load = _span([r["clipsearch"][scenario].get("model_load_s", 0.0) for r in rounds], "{:.1f}")
        bg = [r["clipsearch"][scenario]["background_s"] for r in rounds]
        bg_rss = [r["clipsearch"][scenario]["background_peak_rss_mb"] for r in rounds]
        bg_text = "none" if not any(bg) else f"{_span(bg, '{:.1f} s')}, peak RSS {_span(bg_rss, '{:.0f} MB')}"
        per_run.append(f"| {label} | {rss['rclip']} | {rss['clipsearch']} | {load} | {bg_text} |")
    agree = [r["agreement"] for r in rounds]
    up_min = min(a["upright_min"] for a in agree)
    up_mean = sum(a["upright_mean"] for a in agree) / len(agree)
    rot = [a["rotated_mean"] for a in agree if not math.isnan(a["rotated_mean"])]
    rot_text = (f", and {sum(rot) / len(rot):.2f} on average for the photos stored sideways\nwith an "
                "EXIF orientation tag, which rclip does not apply") if rot else ""
    commits = sorted({r.get("clipsearch_commit", v["clipsearch_commit"]) for r in rounds})
    mixed = ("" if len(commits) == 1 else
             f" **The rounds ran different commits ({'; '.join(commits)}): rerun with --rev.**")
    source = f"`{data.get('clipsearch_source', v['clipsearch_tree'])}`" + (f" (snapshot of `{data['rev']}`)"
                                                                        if data.get("rev") else "")
    diff = ex["max_abs_diff_vs_torch"]
    bg_peak = max(r["clipsearch"][sc]["background_peak_rss_mb"] for r in rounds for sc in ("phone", "camera", "new"))
    exporter_note = ("" if not bg_peak else
                     f" The peak RSS row is the `index` process's; the exporter it leaves running peaks at up to "
                     f"{bg_peak:.0f} MB in its own process after `index` has returned (second table).")
    first = " first, ".join(("rclip", "clipsearch"))
    return f"""{HEADING}

Machine: {m['date']}, {m['cores']} cores shared with other sessions (1-minute load average
{min(loads):.1f}–{max(loads):.1f} at the starts of the runs, not niced), {m['cpu']}
(avx512_bf16: {m['avx512_bf16']}, amx_bf16: {m['amx_bf16']}); Python {m['python']}, torch {m['torch']}.
clipsearch: {source} at {v['clipsearch_commit']}.
rclip {v['rclip_venv_rclip']} in its own venv with onnxruntime {v['rclip_venv_onnxruntime']}, numpy
{v['rclip_venv_numpy']}, Pillow {v['rclip_venv_pillow']}.
{len(rounds)} rounds, alternating which tool goes first ({first} second in round 1), each run
a new process in fresh data and cache directories; best of the rounds with the range in brackets,
and the ratio of the two bests. Whole-process wall time; peak RSS is the process's own `ru_maxrss`.
The whole benchmark took {data['bench_seconds'] / 60:.0f} minutes.{mixed}

| end to end | rclip 3.3.0 | clipsearch | **clipsearch ÷ rclip** (best) | ÷ per round |
|---|---|---|---|---|
{chr(10).join(rows)}

{verdict} Each run lasts seconds to minutes on a machine whose load
changes within them: the per-round ratios (the two tools back to back) are the figures to trust, and
a row whose per-round ratios straddle 1 is not settled.{exporter_note}

| run | rclip peak RSS MB | clipsearch peak RSS MB | clipsearch model load s | \
clipsearch work left running after exit (waited for, not timed) |
|---|---|---|---|---|
{chr(10).join(per_run)}

The same weights ran in both: cosine between the two tools' vectors of the same phone photo
≥ {up_min:.5f} (mean {up_mean:.5f}; the difference is clipsearch's bf16 and its draft JPEG
decode against rclip's fp32 and full decode){rot_text}.

How rclip was set up (offline; reproduce with the commands below):

- `python3.11 -m venv /work/rclip-venv && /work/rclip-venv/bin/pip install rclip==3.3.0` (4.0.8 is
  not offered for Python 3.11 here).
- rclip 3.3.0 downloads `visual.onnx` and `textual.onnx` of `ViT-B-32-256-datacomp_s34b_b86k` and
  `tokenizer/bpe_simple_vocab_16e6.txt.gz` from the Hugging Face repo `yurijmikhalevich/rclip-models`
  into its data directory (`$RCLIP_DATADIR`) only when they are missing. `bench/rclip_setup.py`
  builds them instead, the way rclip's own `scripts/convert_model.py` does: open_clip
  {ex['open_clip']} ViT-B-32-256, `model.visual` and `encode_text` exported with
  {ex['exporter']} (input `input`, output `output`), max abs
  difference to torch {diff['visual']:.1e} (visual) and {diff['textual']:.1e} (textual), and open_clip's
  BPE vocabulary.
  Weights: {ex['seed']},
  sha256 {ex['weights_sha256'][:16]}…; clipsearch gets the same file as
  `--model local-dir:bench/.cache/models/ViT-B-32-256`. Every rclip run gets a fresh
  `$RCLIP_DATADIR` with the three files linked in, and `HF_HUB_OFFLINE=1`.
- rclip runs through `rclip.main.init_rclip(cwd, 8)`, which is what `rclip QUERY` runs before it
  searches, with the CLI's defaults; its query (text model load and search) is left out, which
  favours rclip, as `clipsearch index` loads no text model for a query either.

What each tool does differently here:

- **rclip**: ONNX Runtime fp32 on the CPU provider, intra-op threads = the cores it may use
  ({m['cores']}); a thread pool of min(16, cores) loaders, each hashing the file (SHA-256 of its first
  1 MB and last 1 KB, its duplicate check) and decoding it at full size with Pillow, then bicubic
  resize to 256 and centre crop in numpy; batches of 8; EXIF orientation not applied; vectors in SQLite.
- **clipsearch**: torch, bf16 on this CPU (native bf16: {m['native_bf16']}; `--precision auto`),
  fp32 elsewhere; JPEG draft decoding (DCT-domain downscale) in a thread pool sized from measured
  decode and model rates; EXIF orientation applied; SQLite plus a FAISS cache; the first index of a set of
  weights also exports the text tower to ONNX for torch-free queries (a cost rclip does not have:
  it runs its text model from the downloaded file).

Rerun (photos, weights and ONNX files are cached under `--work`, default `bench/.cache/`; making
the 500 photos takes ~20 minutes the first time, the benchmark itself {data['bench_seconds'] / 60:.0f} minutes):

    python bench/bench_rclip.py --rclip-python /work/rclip-venv/bin/python --clipsearch /work/main --rev main
"""


def write(data: dict[str, Any]) -> None:
    """Replace (or append) this section in docs/benchmarks.md, leaving every other section alone."""
    text = DOC.read_text() if DOC.exists() else ""
    new = section(data).rstrip("\n") + "\n"
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + new
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + new + (text[end:] if end >= 0 else "")
    DOC.write_text(text)
    print(f"wrote {DOC}")
