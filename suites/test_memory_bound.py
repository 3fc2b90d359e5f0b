"""Memory-bound rows: the STREAM family, the vendor's device-to-device copy, and batch-1 bf16 GEMV.

Every row here keeps NVML GPU-Util near 100% and the memory system near its bandwidth, while MFU stays
around 1% or below: these kernels do at most 2 FLOPs per 4 to 12 bytes moved (GEMV about 1 per byte),
so the roofline itself caps them far under the FLOP peak. MBU is the number that says whether they are
well written.
"""
from __future__ import annotations

import pytest

from mfugap.kernels import elementwise, gemv, stream
from mfugap.metrics import find_row, goal, percent_of
from mfugap.plugin import quick_subset

LESSON = """An MFU near 1% is no sign of bad configuration when MBU is high: STREAM kernels and batch-1
GEMV do about one FLOP per byte or less, so the roofline caps them far under the FLOP peak and MBU is
their measure. Compare the triad with the vendor's device-to-device memcpy to see how close a
hand-written kernel gets to the bandwidth the hardware actually delivers."""


CHAIN_STEPS = 8


@pytest.mark.parametrize("op", quick_subset(stream.OPS, keep=["triad", "dot"]))
def test_stream(measure, gpu, quick, op):
    """fp32 over arrays of at least 4x L2, bytes counted STREAM's way (4 per element of each array):
    copy a = b (0 FLOPs, 8 B per element), scale a = s*b (1, 8 B), add a = b + c (1, 12 B),
    triad a = b + s*c (2, 12 B), dot sum b*c (2, 8 B)."""
    n = stream.default_n(gpu.device.l2_bytes, quick)
    measure(stream.StreamOp(op, n, gpu.device.sm_count))


def test_memcpy_d2d(measure, gpu, quick):
    """cudaMemcpyAsync device to device of n fp32 elements: 2 x 4n bytes (read + write), 0 FLOPs."""
    measure(stream.DeviceCopy(stream.default_n(gpu.device.l2_bytes, quick)))


@pytest.mark.parametrize("shape", quick_subset(gemv.SHAPES, keep=gemv.SHAPES[:1]),
                         ids=lambda shape: "x".join(map(str, shape)))
def test_gemv_bf16(measure, gpu, shape):
    """y = W x, W [rows x cols] bf16, x bf16, y fp32: 2*rows*cols FLOPs and 2*rows*cols + 2*cols +
    4*rows bytes. W rotates through copies adding up to 4x L2, so each launch reads it from DRAM."""
    rows, cols = shape
    measure(gemv.Gemv(rows, cols, gpu.device.l2_bytes))


def summarize(rows: list[dict]) -> dict:
    """Each STREAM kernel's GB/s as a percentage of the vendor's device-to-device memcpy, and the
    kernel issue's targets for the triad: >= 90% of the datasheet bandwidth, within 3% of memcpy. GEMV
    and the elementwise chain are left out: their minimum bytes are not what they move (the unfused
    chain moves 8 times its minimum), so a percentage of memcpy would misread them."""
    memcpy = stream.DeviceCopy.NAME
    streams = [r for r in rows if r["workload"].startswith("stream_") or r["workload"] == memcpy]
    of_memcpy = percent_of(streams, memcpy, "gbps")
    triad = find_row(rows, "stream_triad")
    return {"% of memcpy GB/s": of_memcpy,
            "targets": {"triad MBU %": goal(triad and triad["mbu_pct"], at_least=90),
                        "triad % of memcpy": goal(triad and of_memcpy.get(triad["label"]), at_least=97)}}


@pytest.mark.parametrize("fused", [False, True], ids=["separate-kernels", "fused"])
def test_elementwise_chain(measure, gpu, quick, fused):
    """y = 8 applications of v -> a*v + b to x, as 8 kernels or 1: 2*8*n FLOPs, 8n minimum bytes either
    way; the separate kernels move 8 times that, so the same busy GPU takes ~8x longer (MBU ~1/8)."""
    n = stream.default_n(gpu.device.l2_bytes, quick)
    measure(elementwise.AffineChain(n, CHAIN_STEPS, fused, gpu.device.sm_count))
