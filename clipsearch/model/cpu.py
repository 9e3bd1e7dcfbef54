"""What the CPU can do, from /proc/cpuinfo: no torch, so the torch-free query path can ask too.

embedder.py (which precision the model runs in) and image_tower.py (which runtime runs the exported
image tower) ask the same question and must get the same answer.
"""

from __future__ import annotations


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there: macOS, Windows)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bf16 matrix instructions (AMX or AVX512-BF16), from /proc/cpuinfo's flags.

    Measured on one core (bench/bench_cpu_backends.py, docs/benchmarks.md): with AVX512-BF16 and no
    AMX, bf16 runs ViT-B-32's image tower ~1.9x faster than fp32 (AMX: ~4x); without either, oneDNN
    emulates bf16 at 20-38x below fp32's GEMM rate (ONEDNN_MAX_CPU_ISA=AVX2), so fp32 it is.
    """
    found = flags(cpuinfo)
    return "amx_bf16" in found or "avx512_bf16" in found
