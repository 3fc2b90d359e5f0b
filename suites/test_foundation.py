"""Both ends of the gap on one GPU: a STREAM triad, a cuBLAS bf16 GEMM, and a spin that does nothing.

All three keep NVML GPU-Util near 100%. The GEMM turns that into most of the tensor peak (high MFU);
the triad turns it into most of the memory bandwidth (MFU ~1%, MBU ~90%: efficient for what it is);
the spin turns it into nothing (MFU 0, GPM SM utilization ~1/SMs).
"""
from __future__ import annotations

from mfugap.kernels import cublas_gemm, spin, stream
from mfugap.metrics import find_row, goal

LESSON = """GPU-Util near 100% on all three rows says only that a kernel was running: the spin, one
block on one SM doing no math, reads as busy as the GEMM. MFU separates them (GEMM high, triad ~1%,
spin 0), MBU shows the triad is memory-bound and efficient, and GPM SM utilization shows how little of
the chip the spin occupies."""


def test_stream_triad(measure, gpu, quick):
    """a[i] = b[i] + s * c[i] in fp32 over arrays of at least 4x L2: 2 FLOPs and 12 bytes per element."""
    n = stream.default_n(gpu.device.l2_bytes, quick)
    measure(stream.Triad(n, gpu.device.sm_count))


def test_cublas_bf16_gemm(measure, quick):
    """C = A @ B in bf16 with fp32 accumulation through cuBLAS: 2*M*N*K FLOPs, the vendor ceiling."""
    size = 4096 if quick else 8192
    measure(cublas_gemm.CublasGemm(size, size, size, "bf16"))


def test_spin_one_block(measure):
    """One single-thread block spinning 20 ms per launch: busy by NVML's count, zero model FLOPs."""
    measure(spin.Spin(blocks=1, ms=20.0))


def summarize(rows: list[dict]) -> dict:
    """The foundation issue's targets: triad >= 90% of the datasheet bandwidth, cuBLAS bf16 at 8192^3
    >= 75% of the dense bf16 peak (a full run: --quick runs 4096^3), the sampler under 1% of a window."""
    triad = find_row(rows, "stream_triad")
    gemm = find_row(rows, cublas_gemm.CublasGemm.name, precision="bf16", m=8192)
    overheads = [r["sampler_overhead_pct"] for r in rows if r["sampler_overhead_pct"] is not None]
    return {"targets": {"triad MBU %": goal(triad and triad["mbu_pct"], at_least=90),
                        "cuBLAS bf16 8192^3 MFU %": goal(gemm and gemm["mfu_pct"], at_least=75),
                        "sampler overhead % (worst of this suite's rows)":
                            goal(max(overheads, default=None), at_most=1)}}
