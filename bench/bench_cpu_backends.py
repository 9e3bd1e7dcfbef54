"""ViT-B-32's image tower on one core of a CPU without AMX: backends against the core's GEMM rate (issue 22).

A random-initialised ViT-B-32 (seeded: speed does not depend on weight values), in eval mode,
on ONE thread, at batch 1 (a query) and batch 16 (indexing's batches are 32: per image the same
matrix shapes but for the row count, 50 tokens x 16 = 800 rows already fill the kernels). Each
variant runs in a fresh subprocess:

  torch eager fp32 / bf16   clipsearch's own path (Embedder: weights cast to bf16, no autocast)
  torch.compile fp32 / bf16 inductor, freezing on (prepacked oneDNN weights), static shapes
  ONNX Runtime fp32         the graph image_export.py exports, ORT_ENABLE_ALL, intra_op 1
  ONNX Runtime int8         dynamic quantisation of that graph: opt-in only, fidelity stated
  OpenVINO fp32 / bf16      the same ONNX graph, 1 stream, 1 thread, precision hint f32/bf16

and again with the ISA capped at AVX2 to stand for AVX2-only CPUs (most laptops without
AVX-512): ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN: torch's bf16 and packed kernels, OpenVINO's fork),
ATEN_CPU_CAPABILITY=avx2 (torch's own vectorised kernels, and the ISA inductor generates for),
MKL_ENABLE_INSTRUCTIONS=AVX2 (torch's fp32 GEMM is MKL's sgemm) and OV_CPU_MAX_ISA=AVX2
(OpenVINO's own kernels; honoured by debug-caps builds only, so the worker records the kernels
OpenVINO actually chose). ONNX Runtime has no such switch (MLAS picks its kernels by CPUID), so
its AVX2 case cannot be simulated here. bf16 is not run under the AVX2 cap: such CPUs have no
bf16 instructions, and oneDNN's emulation (measured as a matmul rate) shows why clipsearch runs
fp32 there.

The ideal: the model's FLOPs per image (counted with torch.utils.flop_counter.FlopCounterMode
with autograd on, so nn.MultiheadAttention takes its decomposed path: under inference_mode its
fused fast path hides the q/k/v and output projections from the counter, a third of the FLOPs)
over a same-precision 1024x1024 product's FLOP/s on one thread (the faster of torch's matmul,
fp32: MKL sgemm, bf16: oneDNN, and oneDNN's own linear), sampled between the model's timed runs
in the same process under the same ISA cap.
int8 is set against the fp32 ideal. Fidelity: the cosine of each of 16 real pictures' vectors
(scikit-image's data photos and crops of them, decoded and normalised as indexing does) to torch
eager fp32 at the default ISA.

    python bench/bench_cpu_backends.py [--runs 5] [--only torch-fp32,ov-bf16] [--no-avx2] [--reverse --append]
    python bench/bench_cpu_backends.py --table     # the docs table from bench/results/cpu-backends.json

OpenVINO is not a clipsearch dependency: `pip install openvino` to include it (its rows fail otherwise).
The full run takes ~14 minutes on 2 busy cores (torch.compile's two compiles per variant are most of it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

WORK = common.CACHE / "cpu-backends"  # pictures, FLOP count and the exported graphs, reused between runs
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OV_CPU_MAX_ISA": "AVX2"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# (name, backend, precision, also under the AVX2 cap)
VARIANTS = [("torch-fp32", "torch", "fp32", True), ("torch-bf16", "torch", "bf16", False),
            ("compile-fp32", "compile", "fp32", True), ("compile-bf16", "compile", "bf16", False),
            ("ort-fp32", "ort", "fp32", False), ("ort-int8", "ort", "int8", False),
            ("ov-fp32", "ov", "fp32", True), ("ov-bf16", "ov", "bf16", False)]
BATCHES = (1, 16)
N_PICTURES = 16


# ---- setup (its own subprocess): pictures, FLOPs, ONNX graphs -------------------------------------------

def setup() -> None:
    import torch
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    from clipsearch.ingest import images
    from clipsearch.model import names
    from clipsearch.model.embedder import Embedder

    model_dir = common.random_model("ViT-B-32")
    WORK.mkdir(parents=True, exist_ok=True)
    emb = Embedder(names.parse(f"local-dir:{model_dir}"), "cpu", "fp32", download=False)
    pre = emb.preprocess
    rng = np.random.default_rng(22)
    srcs = common.source_photos()
    pics: list[Image.Image] = list(srcs)
    while len(pics) < N_PICTURES:
        pics.append(common.random_crop(srcs[len(pics) % len(srcs)], rng, 0.4))
    pixels = []
    for i, pic in enumerate(pics[:N_PICTURES]):
        path = WORK / f"picture{i:02d}.jpg"
        pic.convert("RGB").save(path, quality=90)
        pixels.append(images.decode(str(path), pre).pixels)
    np.save(WORK / "pixels.npy", np.stack(pixels))
    visual = emb.model.visual
    x = torch.zeros(1, 3, pre.size, pre.size, requires_grad=True)  # blocks attention's fused fast path
    with FlopCounterMode(display=False) as counted:
        visual(x)
    x = x.detach()
    with torch.inference_mode(), FlopCounterMode(display=False) as fast:
        visual(x)
    flops = {"per_image": counted.get_total_flops(), "inference_mode_fast_path_counted": fast.get_total_flops()}
    torch.onnx.export(visual, (torch.zeros(3, 3, pre.size, pre.size),), str(WORK / "model.onnx"),
                      input_names=["pixels"], output_names=["features"], dynamo=True, external_data=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},), verbose=False)
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)
    quantize_dynamic(str(WORK / "model.onnx"), str(WORK / "model-int8.onnx"), weight_type=QuantType.QInt8)
    meta = {"model_dir": str(model_dir), "flops": flops, "size": pre.size, "mean": pre.mean, "std": pre.std}
    (WORK / "setup.json").write_text(json.dumps(meta))


# ---- one variant (its own subprocess) ---------------------------------------------------------------------

def matmul_gflops(torch: Any, dtype: Any, n: int = 1024, reps: int = 5) -> dict[str, float]:
    """One thread's FLOP/s on an n x n x n product, through torch's matmul (fp32: MKL's sgemm; bf16:
    oneDNN) and through oneDNN's own linear (torch's mkldnn tensors): the ideal takes the faster."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    am, bm = a.to_mkldnn(), b.to_mkldnn()
    out = {}
    for name, fn in (("matmul", lambda: a @ b), ("onednn", lambda: torch._C._nn.mkldnn_linear(am, bm, None))):
        try:
            fn()
        except RuntimeError:  # oneDNN refuses bf16 linear under an ISA without bf16 conversions
            continue
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = 2 * n**3 / statistics.median(times) / 1e9
    return out


def build(backend: str, precision: str, meta: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A function uint8 pixels -> normalised float32 vectors, and facts about how it runs."""
    import torch

    from clipsearch.model import image_tower
    from clipsearch.model.identity import Preprocess

    pre = Preprocess(meta["size"], tuple(meta["mean"]), tuple(meta["std"]), "bicubic", "shortest", 0)
    info: dict[str, Any] = {}
    if backend in ("torch", "compile"):
        from clipsearch.model import names
        from clipsearch.model.embedder import Embedder

        emb = Embedder(names.parse(f"local-dir:{meta['model_dir']}"), "cpu", precision, download=False)
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if backend == "compile":
            import torch._inductor.config as inductor
            from torch._inductor import cpu_vec_isa

            inductor.freezing = True  # weights become constants: prepacked for oneDNN, folded
            info["inductor_vec_isa"] = str(cpu_vec_isa.pick_vec_isa())
            emb.model.encode_image = torch.compile(emb.model.encode_image, dynamic=False)
        return emb.embed_images, info

    def vectors(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    if backend == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = "model-int8.onnx" if precision == "int8" else "model.onnx"
        sess = ort.InferenceSession(str(WORK / graph), opts, providers=["CPUExecutionProvider"])
        info["onnxruntime"] = ort.__version__
        return lambda px: vectors(sess.run(None, {"pixels": image_tower.normalise(px, pre)})[0]), info
    import openvino as ov

    core = ov.Core()
    info["openvino"] = ov.__version__
    compiled: dict[int, Any] = {}

    def run(px: np.ndarray) -> np.ndarray:
        n = len(px)
        if n not in compiled:  # static shapes, one compiled model per batch size
            model = core.read_model(str(WORK / "model.onnx"))
            model.reshape({model.input(0): [n, 3, pre.size, pre.size]})
            compiled[n] = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
            if "kernels" not in info:
                info["kernels"] = ov_kernels(compiled[n])
        return vectors(compiled[n]({0: image_tower.normalise(px, pre)})[0])

    return run, info


def ov_kernels(compiled: Any) -> dict[str, int]:
    """How many of OpenVINO's matrix nodes ran on which kernel (jit_avx512_*, brgemm_avx2_*, ...)."""
    kinds: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = str(rt["layerType"].astype(str)) if "layerType" in rt else ""
        if layer in ("FullyConnected", "MatMul", "Convolution"):
            kind = f"{layer}:{rt['primitiveType'].astype(str)}:{rt['runtimePrecision'].astype(str)}"
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def worker(backend: str, precision: str, runs: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    meta = json.loads((WORK / "setup.json").read_text())
    pixels = np.load(WORK / "pixels.npy")
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    fn, info = build(backend, precision, meta)
    info["build_s"] = time.perf_counter() - t0
    gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # bf16 without bf16 instructions is emulated at well under 1 GFLOP/s: a smaller matrix then
    n = 1024 if max(matmul_gflops(torch, gemm_dtype, 256, 1).values()) > 5 else 256
    first: dict[int, float] = {}
    vecs = None
    for b in BATCHES:  # warm-up: compilation, OpenVINO's compile, oneDNN's kernel JIT, weight packing
        t = time.perf_counter()
        out = fn(pixels[:b])
        first[b] = time.perf_counter() - t
        if b == N_PICTURES:
            vecs = out
        fn(pixels[:b])
    ms: dict[int, list[float]] = {b: [] for b in BATCHES}
    gemm: list[dict[str, float]] = []
    for r in range(runs):  # matmul samples interleaved with the model's runs: the same moment's load
        gemm.append(matmul_gflops(torch, gemm_dtype, n))
        for b in BATCHES:
            for i in range(3 if b == 1 else 1):
                start = (r * 3 + i) % N_PICTURES if b == 1 else 0
                t = time.perf_counter()
                fn(pixels[start:start + b])
                ms[b].append(1000 * (time.perf_counter() - t) / b)
    gemm.append(matmul_gflops(torch, gemm_dtype, n))
    fp32_rate = matmul_gflops(torch, torch.float32) if gemm_dtype != torch.float32 else None
    if os.environ.get("ONEDNN_MAX_CPU_ISA") and precision == "fp32":  # bf16 with the instructions capped
        info["bf16_gemm_gflops_capped"] = matmul_gflops(torch, torch.bfloat16, 256, 1)
    rates = {k: statistics.median(g[k] for g in gemm) for k in gemm[0]}
    assert vecs is not None
    np.save(WORK / f"vectors-{os.getpid()}.npy", vecs)
    return {"info": info, "first_call_s": {str(b): v for b, v in first.items()},
            "ms_per_image": {str(b): statistics.median(v) for b, v in ms.items()},
            "ms_runs": {str(b): v for b, v in ms.items()}, "gemm_gflops": max(rates.values()),
            "gemm_by_kernel": rates,
            "gemm_runs": gemm, "gemm_n": n, "gemm_dtype": str(gemm_dtype).replace("torch.", ""),
            "fp32_gemm_gflops_after": fp32_rate, "vectors": f"vectors-{os.getpid()}.npy",
            "load_before": load0, "load_after": os.getloadavg()[0]}


# ---- the driver --------------------------------------------------------------------------------------------

def spawn(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ONE_THREAD, **env},
                          timeout=timeout, check=False, cwd=str(common.ROOT.parent))
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--no-avx2", action="store_true")
    ap.add_argument("--reverse", action="store_true", help="run the variants in reverse order")
    ap.add_argument("--append", action="store_true",
                    help="add this run's rows to bench/results/cpu-backends.json as one more round")
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "PRECISION"))
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the docs table of the saved results")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((common.RESULTS / "cpu-backends.json").read_text())))
        return None
    if args.setup:
        return setup()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.runs)))
        return None
    started = time.perf_counter()
    if not (WORK / "setup.json").exists():
        subprocess.run([sys.executable, __file__, "--setup"], check=True, env={**os.environ, **ONE_THREAD},
                       cwd=str(common.ROOT.parent))
    meta = json.loads((WORK / "setup.json").read_text())
    flops = meta["flops"]["per_image"]
    only = {s for s in args.only.split(",") if s}
    jobs = []
    for name, backend, precision, avx2 in VARIANTS:
        if only and name not in only:
            continue
        jobs.append((name, "default", backend, precision, {}))
        if avx2 and not args.no_avx2:  # each variant's AVX2 run right after its default one
            jobs.append((name, "avx2", backend, precision, AVX2))
    if args.reverse:
        jobs.reverse()
    rows: list[dict[str, Any]] = []
    ref_file = WORK / "reference.npy"  # torch eager fp32 at the default ISA: deterministic, kept between runs
    ref = np.load(ref_file) if ref_file.exists() else None
    for name, isa, backend, precision, env in jobs:
        t = time.perf_counter()
        try:
            out = spawn(["--worker", backend, precision, "--runs", str(args.runs)], env, timeout=240)
        except subprocess.TimeoutExpired:
            out = {"error": "over 240 s"}
        out.update({"variant": name, "isa": isa, "wall_s": time.perf_counter() - t})
        if "error" not in out:
            vecs = np.load(WORK / out.pop("vectors"))
            if ref is None and name == "torch-fp32" and isa == "default":
                ref = vecs
                np.save(ref_file, ref)
            if ref is not None:
                cos = np.sum(vecs * ref, axis=1)
                out["cos_min"], out["cos_mean"] = float(cos.min()), float(cos.mean())
            ideal_ms = 1000 * flops / 1e9 / out["gemm_gflops"]
            out["ideal_ms"] = ideal_ms
            out["over_ideal"] = {b: v / ideal_ms for b, v in out["ms_per_image"].items()}
        rows.append(out)
        print(json.dumps({k: out.get(k) for k in ("variant", "isa", "ms_per_image", "gemm_gflops", "over_ideal",
                                                   "cos_min", "error", "wall_s")}), file=sys.stderr, flush=True)
    for f in WORK.glob("vectors-*.npy"):
        f.unlink()
    payload = {"model": "ViT-B-32 image tower (random seeded weights)", "threads": 1, "batches": list(BATCHES),
               "pictures": N_PICTURES, "flops": meta["flops"], "runs": args.runs, "avx2_env": AVX2,
               "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "total_s": time.perf_counter() - started, "rows": rows}
    previous = common.RESULTS / "cpu-backends.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        rnd = 1 + max(r.get("round", 1) for r in old["rows"])
        payload["rows"] = old["rows"] + [{**r, "round": rnd} for r in rows]
        payload["uptime"] = [*(old["uptime"] if isinstance(old["uptime"], list) else [old["uptime"]]),
                             payload["uptime"]]
        payload["total_s"] = old["total_s"] + payload["total_s"]
        only = set()
    path = common.save("cpu-backends" if not only else "cpu-backends-partial", payload)
    print(table(payload))
    print(path)
    return None


# ---- the table in docs/benchmarks.md ----------------------------------------------------------------------

LABELS = {"torch-fp32": "torch eager fp32", "torch-bf16": "torch eager bf16 (clipsearch today on bf16 CPUs)",
          "compile-fp32": "torch.compile fp32", "compile-bf16": "torch.compile bf16",
          "ort-fp32": "ONNX Runtime fp32", "ort-int8": "ONNX Runtime int8 dynamic (opt-in only)",
          "ov-fp32": "OpenVINO fp32", "ov-bf16": "OpenVINO bf16"}


def table(payload: dict[str, Any]) -> str:
    """Markdown: one line per variant and ISA, each round's ratio to the ideal (median ms in brackets)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in payload["rows"]:
        groups.setdefault((row["variant"], row["isa"]), []).append(row)
    lines = ["| variant | ISA | × ideal, batch 1 | × ideal, batch 16 | ms/img batch 1 | ms/img batch 16 "
             "| GEMM GFLOP/s (ideal's) | min cosine to fp32 |", "|---|---|---|---|---|---|---|---|"]
    for (name, isa), rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        if not ok:
            lines.append(f"| {LABELS.get(name, name)} | {isa} | failed: {rows[0]['error']} | | | | | |")
            continue

        def cell(key: str, b: str, fmt: str, rows: list[dict[str, Any]] = ok) -> str:
            return " / ".join(format(r[key][b], fmt) for r in rows)

        cos = next((r["cos_min"] for r in ok if "cos_min" in r), float("nan"))
        gemm = " / ".join(f"{r['gemm_gflops']:.0f} {r['gemm_dtype']}" for r in ok)
        lines.append(f"| {LABELS.get(name, name)} | {isa} | {cell('over_ideal', '1', '.2f')} "
                     f"| {cell('over_ideal', '16', '.2f')} | {cell('ms_per_image', '1', '.0f')} "
                     f"| {cell('ms_per_image', '16', '.0f')} | {gemm} | {cos:.5f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
