"""End to end against the real rclip 3.3.0: first indexes, 1 new photo, peak RSS (issue 22).

    python bench/bench_rclip.py --rclip-python /work/rclip-venv/bin/python [--clipsearch DIR [--rev REV]]
                                [--phone 300] [--camera 200] [--rounds 2] [--work DIR] [--doc-only]

--clipsearch runs another checkout's code (PYTHONPATH); with --rev, a `git archive` snapshot of that
commit instead of its working tree, so that a merge landing mid-run cannot mix two versions (each
round records the commit it ran). Takes ~18 minutes at the default sizes on 2 shared cores, plus
~20 minutes the first time to make the 500 photos (cached under --work, default bench/.cache/).

rclip lives in its own virtual environment (never a clipsearch dependency):

    python3.11 -m venv /work/rclip-venv && /work/rclip-venv/bin/pip install rclip==3.3.0

Without --rclip-python (or when that interpreter has no rclip) the script says so and exits 0; it
is not part of `bench/run_all --quick`. Both tools run the same model, ViT-B-32-256 with the same
random weights: clipsearch from a local-dir folder, rclip from ONNX files exported offline into
its data directory in the format it downloads (bench/rclip_setup.py).

Each round runs, for both tools and alternating which goes first, in fresh data/cache directories:
the first index of N phone photos (4032x3024 JPEG), the first index of M camera photos (6000x4000),
then one new phone photo added to the first folder and indexed again. Every run is a new process
under a wrapper that reports the child's wall time and peak RSS (ru_maxrss of RUSAGE_CHILDREN, as
bench_lean_index.py does); anything a run leaves running in the background (found by an environment
marker in /proc) is waited for, timed, and its peak RSS (VmHWM) kept, so it cannot leak into the
next measurement. rclip is driven through its own `rclip.main.init_rclip` (what the `rclip QUERY`
command runs before it searches) with its CLI's defaults; the query itself is left out, as
`clipsearch index` runs none.

Results: bench/results/rclip.json and the section "End to end against rclip 3.3.0" of
docs/benchmarks.md (rewritten in place; --doc-only re-renders it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common
import rclip_doc
import rclip_setup

HERE = Path(__file__).resolve().parent.parent
MARKER = "CLIPSEARCH_BENCH_RUN"
# Runs ARGV as a child; prints its wall time and peak RSS (kB) last on stderr.
WRAPPER = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "rc = subprocess.run(sys.argv[1:]).returncode\n"
           "print('wall-s', time.perf_counter() - t, file=sys.stderr)\n"
           "print('peak-rss-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(rc)\n")
# What `rclip QUERY` does up to its search (rclip/main.py, main -> init_rclip), with the CLI's
# defaults: batch 8, default excluded folders, no RAW, the memory-based pixel cap.
RCLIP_DRIVER = ("import os\n"
                "from rclip.main import init_rclip\n"
                "rclip, model, db = init_rclip(os.getcwd(), 8)\n"
                "rclip.close(); model.close(); db.close()\n")
SCENARIOS = ("phone", "camera", "new")


def _marked(token: str) -> list[int]:
    """Processes that inherited this run's marker (a detached background job, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{MARKER}={token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run argv under the wrapper; wall s, peak RSS MB, stdout, and any background work it left."""
    token = uuid.uuid4().hex
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True,
                          env={**env, MARKER: token}, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed in {cwd}: {proc.stderr[-3000:]}")
    lines = proc.stderr.splitlines()
    wall = float(next(x for x in reversed(lines) if x.startswith("wall-s ")).split()[1])
    start, hwm = time.perf_counter(), 0
    while pids := _marked(token):  # e.g. an export detached from the index run: let it finish first
        hwm = max([hwm, *(_hwm_kb(p) for p in pids)])
        time.sleep(0.2)
    return {"wall_s": wall, "peak_rss_mb": common.peak_rss_mb(proc), "load_1min": load, "stdout": proc.stdout,
            "background_s": time.perf_counter() - start if hwm else 0.0, "background_peak_rss_mb": hwm / 1024}


def rclip_env(datadir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "PYTHON"))}
    return {**env, "RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1", "HF_HOME": str(datadir / "hf")}


def clipsearch_env(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "PYTHON"))}
    return {**env, "PYTHONPATH": str(tree), "CLIPSEARCH_HOME": str(home), "XDG_CACHE_HOME": str(home / "xdg"),
            "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf")}


def rclip_count(datadir: Path) -> int:
    with sqlite3.connect(datadir / "db.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM images WHERE deleted IS NULL").fetchone()[0])


def run_rclip(py: str, template: Path, work: Path, scenario: str, folder: Path) -> dict[str, Any]:
    datadir = work / ("data-camera" if scenario == "camera" else "data-phone")
    if scenario != "new":
        datadir.mkdir(parents=True)
        rclip_setup.link_datadir(template, datadir)
    before = 0 if scenario != "new" else rclip_count(datadir)
    out = timed([py, "-c", RCLIP_DRIVER], rclip_env(datadir), folder)
    out["indexed"] = rclip_count(datadir) - before
    del out["stdout"]
    return out


def run_clipsearch(tree: Path, model_dir: Path, work: Path, scenario: str, folder: Path) -> dict[str, Any]:
    home = work / ("home-camera" if scenario == "camera" else "home-phone")
    if scenario != "new":
        home.mkdir(parents=True)
    args = ["index", str(folder), "--index", str(home / "index"), "--json"]
    if scenario != "new":
        args += ["--model", f"local-dir:{model_dir}"]
    out = timed([sys.executable, "-m", "clipsearch", *args], clipsearch_env(tree, home), home)
    summary = json.loads(out.pop("stdout"))
    out.update(indexed=int(summary["embedded"]), model_load_s=float(summary.get("model_load_seconds", 0.0)))
    return out


def agreement(work: Path) -> dict[str, float]:
    """Cosine between the two tools' vectors of each phone photo: the same weights really ran.

    rclip ignores EXIF orientation (it opens the file and converts to RGB), so the photos stored
    sideways (every fifth, tagged orientation 6) are compared apart from the upright ones.
    """
    import numpy as np

    with sqlite3.connect(work / "rclip" / "data-phone" / "db.sqlite3") as db:
        theirs = {Path(p).name: np.frombuffer(v, np.float32)
                  for p, v in db.execute("SELECT filepath, vector FROM images WHERE deleted IS NULL")}
    with sqlite3.connect(work / "clipsearch" / "home-phone" / "index" / "clipsearch.db") as db:
        ours = {Path(p).name: np.frombuffer(v, np.float32)
                for p, v in db.execute("SELECT path, vector FROM images JOIN vectors ON image_id = id")}
    upright, rotated = [], []
    for name, v in ours.items():
        if name in theirs and name.startswith("photo"):
            (rotated if int(name[5:10]) % 5 == 0 else upright).append(float(v @ theirs[name]))
    return {"upright_min": min(upright, default=float("nan")), "upright_mean": float(np.mean(upright)),
            "rotated_mean": float(np.mean(rotated)) if rotated else float("nan"), "compared": len(upright)}


def link_folder(sources: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for p in sources:
        os.link(p, folder / p.name)  # hard links: the same cached bytes for every run, no copying
    return folder


def one_round(order: list[str], args: argparse.Namespace, photos: dict[str, list[Path]], model_dir: Path,
              template: Path, work: Path) -> dict[str, dict[str, Any]]:
    folders = {tool: {s: link_folder(photos[s], work / tool / f"photos-{s}") for s in ("phone", "camera")}
               for tool in order}
    out: dict[str, dict[str, Any]] = {tool: {} for tool in order}
    for scenario in SCENARIOS:
        for tool in order:
            if scenario == "new":
                os.link(photos["new"][0], folders[tool]["phone"] / "new00000.jpg")
            folder = folders[tool]["camera" if scenario == "camera" else "phone"]
            if tool == "rclip":
                res = run_rclip(args.rclip_python, template, work / tool, scenario, folder)
            else:
                res = run_clipsearch(args.clipsearch, model_dir, work / tool, scenario, folder)
            want = 1 if scenario == "new" else len(photos[scenario])
            if res["indexed"] != want:  # a skipped photo would make a tool look faster than it is
                raise RuntimeError(f"{tool} {scenario}: indexed {res['indexed']} photos, expected {want}")
            out[tool][scenario] = res
            bg = f", background {res['background_s']:.1f} s" if res["background_s"] else ""
            print(f"  {tool:10} {scenario:6} {res['wall_s']:7.2f} s  {res['peak_rss_mb']:6.0f} MB  "
                  f"(load {res['load_1min']:.1f}{bg})", flush=True)
    out["agreement"] = agreement(work)
    print(f"  vectors rclip vs clipsearch: cosine {out['agreement']}", flush=True)
    return out


def tree_commit(tree: Path) -> str:
    """The checkout's commit, marked "+dirty" when it has uncommitted changes to tracked files."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True, check=False).stdout.strip()
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('log', '-1', '--format=%h %cI %s')}{dirty}" or "not a git checkout"


def snapshot(tree: Path, rev: str, work: Path) -> Path:
    """A read-only copy of `rev` (git archive), so that commits landing in `tree` mid-run change nothing."""
    sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    out = work / "trees" / sha
    if not (out / "clipsearch" / "__init__.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(tree), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        subprocess.run(["git", "init", "-q", str(out)], check=True)  # so tree_commit can name it
        subprocess.run(["git", "-C", str(out), "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit",
                        "-qm", f"snapshot of {sha}", "--allow-empty"], check=True)
    commit = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %cI %s", sha], capture_output=True,
                            text=True, check=True).stdout.strip()
    (out / "SNAPSHOT_OF").write_text(commit + "\n")  # the commit itself: the source tree's own edits are not in it
    return out


def versions(rclip_python: str, tree: Path) -> dict[str, str]:
    probe = ("import importlib.metadata as m, json\n"
             "print(json.dumps({p: m.version(p) for p in ('rclip', 'onnxruntime', 'numpy', 'pillow')}))\n")
    got = json.loads(subprocess.run([rclip_python, "-c", probe], capture_output=True, text=True, check=True,
                                    env=rclip_env(Path(tempfile.gettempdir()))).stdout)
    snap = tree / "SNAPSHOT_OF"
    commit = snap.read_text().strip() if snap.exists() else tree_commit(tree)
    return {**{f"rclip_venv_{k}": v for k, v in got.items()}, "clipsearch_tree": str(tree), "clipsearch_commit": commit}


def has_rclip(py: str | None) -> bool:
    if not py or not Path(py).exists():
        return False
    return subprocess.run([py, "-c", "import rclip.main"], capture_output=True, check=False).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rclip-python", help="the python of a virtual environment with rclip 3.3.0 installed")
    ap.add_argument("--clipsearch", type=Path, default=HERE, help="the clipsearch checkout to run [this one]")
    ap.add_argument("--phone", type=int, default=300, help="phone photos (4032x3024) for the first index")
    ap.add_argument("--camera", type=int, default=200, help="camera photos (6000x4000) for the first index")
    ap.add_argument("--rev", help="run a snapshot of this commit of --clipsearch (git archive), not its working tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=common.CACHE, help="where photos and the ONNX files are cached")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the docs section from bench/results/rclip.json")
    args = ap.parse_args()
    if args.doc_only:
        rclip_doc.write(json.loads((common.RESULTS / "rclip.json").read_text()))
        return
    if not has_rclip(args.rclip_python):
        print(f"skipped: no rclip at --rclip-python {args.rclip_python!r} (see this script's docstring to set one up)")
        return
    args.clipsearch = args.clipsearch.resolve()
    source = args.clipsearch
    if args.rev:
        args.clipsearch = snapshot(args.clipsearch, args.rev, args.work)
    started = time.perf_counter()
    photo_dir = args.work / "photos"
    # make_photos draws each photo in turn from its seed, so a smaller set is the larger one's start.
    photos = {"phone": common.make_photos(photo_dir / f"4032x3024-{args.phone}", args.phone, (4032, 3024), seed=1),
              "camera": common.make_photos(photo_dir / f"6000x4000-{args.camera}", args.camera, (6000, 4000),
                                           seed=2),
              "new": common.make_photos(photo_dir / "4032x3024-new-1", 1, (4032, 3024), seed=3)}
    template = args.work / "rclip-datadir"
    model_dir, export = rclip_setup.rclip_files(template)
    for p in [*photos["phone"], *photos["camera"], *photos["new"]]:
        p.read_bytes()  # into the page cache, so whichever tool goes first reads no cold disk
    rounds = []
    for r in range(args.rounds):
        order = ["rclip", "clipsearch"] if r % 2 == 0 else ["clipsearch", "rclip"]
        print(f"round {r + 1}/{args.rounds} ({' first, '.join(order)} second)", flush=True)
        commit = tree_commit(args.clipsearch)
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:  # same file system: hard links work
            result = one_round(order, args, photos, model_dir, template, Path(tmp))
        rounds.append({**result, "clipsearch_commit": commit})
        if tree_commit(args.clipsearch) != commit:  # without --rev a merge mid-run mixes two versions
            print(f"warning: {args.clipsearch} changed during round {r + 1}: use --rev", file=sys.stderr)
    payload = {"phone": args.phone, "camera": args.camera, "rounds": rounds, "export": export,
               "versions": versions(args.rclip_python, args.clipsearch), "model": rclip_setup.ARCH,
               "clipsearch_source": str(source), "rev": args.rev,
               "loadavg_end": os.getloadavg(), "bench_seconds": time.perf_counter() - started}
    name = "rclip" if (args.phone, args.camera) == (300, 200) else f"rclip-{args.phone}-{args.camera}"
    sys.path.insert(0, str(args.clipsearch))  # common.machine() reads the version of the clipsearch measured
    path = common.save(name, payload)
    print(f"results: {path}")
    if name == "rclip":
        rclip_doc.write(json.loads(path.read_text()))
    else:
        print(rclip_doc.section(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
