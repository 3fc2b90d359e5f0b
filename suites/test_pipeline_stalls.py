"""Pipeline stalls: the same bf16 GEMM step, starved, synchronized, copied into, or waiting on a peer.

Every GEMM row does the math of one size^3 bf16 cuBLAS GEMM per step (2*size^3 FLOPs, bytes 3 * 2 *
size^2) and adds one stall, so MFU falls by the GEMM's share of the step. What differs is whether NVML
sees it: a starved loader and a synchronization leave the GPU with nothing queued, and GPU-Util falls
with MFU; a kernel spinning on a flag for a straggling peer keeps GPU-Util at ~100% while MFU is 0.
The harness's events bracket each whole launch, stall included, so a row's kernel time is its step time.

Cases: 5 duty cycles + 2 sync stalls + 1 wait + 2 copies = 10 windows; --quick measures 2 duty cycles,
one sync stall, the wait and the copies, with 2048^3 GEMMs.
"""
from __future__ import annotations

import pytest

from mfugap.kernels import flag_wait, stalls
from mfugap.plugin import quick_subset

LESSON = """A starved loader or a synchronize-then-host-work step leaves the GPU with nothing queued,
so GPU-Util falls together with MFU: util does see stalls that empty the queue. A kernel spinning on a
flag while it waits for a straggling peer, as collectives do, reads ~100% GPU-Util at MFU 0, so waiting
inside a kernel looks exactly like work. Copying each input batch inside the step costs step time and
MFU that the row's bytes do not show, and more from pageable host memory than from pinned."""

DUTY_PCT = (100, 75, 50, 25, 10)
QUICK_DUTY_PCT = (100, 25)


def gemm_size(quick: bool) -> int:
    return 2048 if quick else 8192


@pytest.mark.parametrize("duty_pct", quick_subset(DUTY_PCT, QUICK_DUTY_PCT))
def test_loader_starvation(measure, quick, duty_pct):
    """Each step waits for the loader's next batch, one every t_kernel / duty of host time, then enqueues
    C = A @ B (bf16, size^3). t_kernel is timed once in setup with events. The host runs ahead of the
    GPU, so loading overlaps the previous GEMM and the GPU idles t_kernel * (1/duty - 1) per step:
    busy share = duty, MFU = duty x the 100% row's MFU."""
    measure(stalls.LoaderStarved(gemm_size(quick), duty_pct=duty_pct))


@pytest.mark.parametrize("host_ms", quick_subset([0.0, 1.0], keep=[1.0]))
def test_sync_stall(measure, quick, host_ms):
    """Each step enqueues C = A @ B, synchronizes the stream, then does host_ms of host work with nothing
    queued: step = t_kernel + sync and launch latency + host_ms, MFU = MFU_gemm x t_kernel / step.
    host_ms = 0 shows the bare cost of one synchronization per step."""
    measure(stalls.SyncStall(gemm_size(quick), host_ms=host_ms))


def test_communication_wait(measure):
    """One thread spins on a flag in mapped pinned host memory until a host timer releases it 5 ms after
    the wait was queued, as a rank waits in a collective for a straggler: 0 FLOPs, step ~= 5 ms plus the
    host's gap between waits, busy by NVML's count throughout."""
    measure(flag_wait.FlagWait(delay_ms=5.0))


@pytest.mark.parametrize("host_memory", stalls.HOST_MEMORY)
def test_input_copy(measure, quick, host_memory):
    """Each step copies the input batch A (size^2 bf16, 2*size^2 bytes) host to device from pinned or
    pageable memory, then computes C = A @ B on it: step = copy + t_kernel. The row's bytes stay the
    GEMM's 3 * 2 * size^2: the copy is overhead in the step, not model traffic."""
    measure(stalls.InputCopy(gemm_size(quick), host_memory=host_memory))


def summarize(rows: list[dict]) -> dict:
    """The loader sweep read against its lesson: per duty cycle, MFU over the 100% row's MFU (the GPU's
    busy share, which the lesson expects to equal the duty) beside GPU-Util, from the rows."""
    loader = {r["params"]["duty_pct"]: r for r in rows if r["workload"] == stalls.LoaderStarved.name}
    full = loader.get(100)
    if not full or not full["mfu_pct"]:
        return {}
    out = {}
    for duty, row in sorted(loader.items(), reverse=True):
        ratio = row["mfu_pct"] / full["mfu_pct"] if row["mfu_pct"] is not None else None
        out[f"duty {duty}%"] = {"MFU / MFU at 100%": ratio, "expected": duty / 100,
                                "GPU-Util %": row["gpu_util_pct"]}
    return out
