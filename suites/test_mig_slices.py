"""MIG slices, real or emulated: the same GEMM and triad on a fraction of the GPU's SMs.

A slice with s of the card's S SMs has peak = whole-GPU peak x s / S, so MFU on a slice is judged
against the slice's own peak. Without MIG, each MIG profile of the card (catalog MIG table) is emulated
with a CUDA green context of about that many SMs (Hopper: multiples of 8); memory and L2 stay shared,
so the triad sees the whole card's bandwidth. Inside a real MIG instance (`mfugap run` starts one
process per instance) the same workloads run on the instance, whose memory and L2 are its own and
where NVML GPU-Util is not available (n/a). The summary is the card's fragmentation table: per full
layout, SMs used and idle and the whole-GPU MFU ceiling sm_used / S.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mfugap import catalog, green, mig
from mfugap.kernels import cublas_gemm, stream
from mfugap.measure import GpuContext, one_line
from mfugap.plugin import quick_subset
from mfugap.workload import Workload

LESSON = """A slice's peak scales with its SMs, so a 1g slice doing an eighth of the card's GEMM rate
can show the same MFU as the whole card. On a real MIG instance NVML GPU-Util is not supported (n/a), so
utilization cannot vouch for a slice. And slices do not add up to the card: seven 1g slices use 112 of
an H100's 132 SMs, leaving 15% of it idle and whole-GPU MFU capped near 85%."""

# Every card's profiles fit in this many cases; a card with fewer skips the rest.
MAX_PROFILES = max(len(spec.mig_profiles) for spec in catalog.catalog())
QUICK_PROFILES = (0, 3)  # the smallest slice and a middle one (3g on Hopper and Ampere)


def _gemm(quick: bool) -> Workload:
    size = 2048 if quick else 4096
    return cublas_gemm.CublasGemm(size, size, size, "bf16")


def _triad(gpu: GpuContext, sm_count: int, quick: bool) -> Workload:
    return stream.Triad(stream.default_n(gpu.device.l2_bytes, quick), sm_count)


def _card_profiles(gpu: GpuContext) -> list[tuple[str, int]]:
    spec = gpu.spec.spec
    if spec is None or not spec.mig_profiles:
        pytest.skip(f"{gpu.name} has no MIG table in the catalog: no profiles to emulate")
    return mig.profiles(spec)


@pytest.fixture(scope="module")
def green_contexts(gpu: GpuContext) -> green.GreenContexts:
    if gpu.device.mig_mode:
        pytest.skip("MIG is enabled on this GPU: its real instances are measured instead (`mfugap run` "
                    "starts one process per instance)")
    try:
        return green.GreenContexts(green.load_driver(), gpu.device.index)
    except green.GreenContextUnavailable as exc:
        pytest.skip(f"green contexts unavailable: {exc}")


def cupy_stream(handle: Any) -> Any:
    """A CuPy stream over a green context's CUstream: Stream.from_external where CuPy has it (14.2
    deprecates ExternalStream for it), else ExternalStream."""
    import cupy

    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(handle, "__cuda_stream__"):
        return from_external(handle)
    return cupy.cuda.ExternalStream(int(handle))


def cupy_refusal(stream: Any) -> str | None:
    """Why CuPy cannot work on this green-context stream, or None. CuPy makes its events and loads its
    kernels in the primary context, and the driver may refuse them on a stream of the green context
    (cuEventRecord wants event and stream in one context). Not yet seen either way on a GPU: asked once per
    slice, so that a refusal skips the slice with its reason instead of erroring every row."""
    import cupy

    try:
        with stream:
            total = cupy.arange(8, dtype=cupy.float32).sum()  # a CuPy kernel on the stream
            event = cupy.cuda.Event()
            event.record(stream)
            event.synchronize()
            value = float(total.get())
    except Exception as exc:  # whatever the driver refuses, the reason is its first line
        return one_line(exc)
    return None if value == 28 else f"a CuPy kernel there summed 0..7 to {value}"


@contextmanager
def emulated_slice(gpu: GpuContext, contexts: green.GreenContexts,
                   index: int) -> Iterator[tuple[GpuContext, green.GreenSlice]]:
    """The `index`-th smallest MIG profile of this card as a green context: its GpuContext (peaks x
    granted SMs / card SMs) on a CuPy stream confined to those SMs; skips when it cannot be made."""
    profiles = _card_profiles(gpu)
    if index >= len(profiles):
        pytest.skip(f"{gpu.name} has only {len(profiles)} MIG profiles in the catalog")
    profile, profile_sms = profiles[index]
    try:
        with contexts.slice(profile, profile_sms, gpu.device.compute_capability) as piece:
            on_slice = cupy_stream(piece.stream)
            refusal = cupy_refusal(on_slice)
            if refusal:
                pytest.skip(f"CuPy cannot run on a green-context stream here: {refusal}")
            yield gpu.partition(piece.granted_sms, on_slice), piece
    except green.GreenContextUnavailable as exc:
        pytest.skip(str(exc))
    except green.GreenContextError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(params=quick_subset(range(MAX_PROFILES), QUICK_PROFILES), ids=lambda i: f"profile{i + 1}")
def emulated(request: pytest.FixtureRequest, gpu: GpuContext,
             green_contexts: green.GreenContexts) -> Iterator[tuple[GpuContext, green.GreenSlice]]:
    with emulated_slice(gpu, green_contexts, request.param) as pair:
        yield pair


@pytest.fixture
def real_slice(gpu: GpuContext) -> str:
    """The row text of the MIG instance this process runs in; skips outside one."""
    if not gpu.device.is_mig:
        pytest.skip("not inside a MIG instance: `mfugap run` starts one process per instance when MIG is "
                    "enabled (or set CUDA_VISIBLE_DEVICES=MIG-<uuid>)")
    return f"MIG {gpu.device.mig_profile}: {gpu.device.sm_count} SMs; memory and L2 its own"


def test_emulated_slice_bf16_gemm(measure, emulated, quick):
    """C = A @ B, bf16 in, fp32 accumulate, 4096^3 (quick 2048^3): 2*M*N*K FLOPs on a green context;
    MFU against peak x granted SMs / card SMs."""
    part, piece = emulated
    measure(_gemm(quick).annotate(slice=piece.label, card=part.spec.key), context=part)


def test_emulated_slice_triad(measure, emulated, gpu, quick):
    """a[i] = b[i] + s * c[i] in fp32 on a green context (grid sized to the granted SMs): 2 FLOPs and 12
    bytes per element; MBU against the whole card's bandwidth, which the slice shares."""
    part, piece = emulated
    measure(_triad(gpu, piece.granted_sms, quick).annotate(slice=piece.label, card=part.spec.key),
            context=part)


def test_mig_instance_bf16_gemm(measure, real_slice, gpu, quick):
    """C = A @ B, bf16 in, fp32 accumulate, 4096^3 (quick 2048^3) on this MIG instance: 2*M*N*K FLOPs;
    MFU against peak x slice SMs / card SMs."""
    measure(_gemm(quick).annotate(slice=real_slice, card=gpu.spec.key))


def test_mig_instance_triad(measure, real_slice, gpu, quick):
    """a[i] = b[i] + s * c[i] in fp32 on this MIG instance: 2 FLOPs and 12 bytes per element; MBU against
    the slice's share of the bandwidth (its memory / the card's)."""
    measure(_triad(gpu, gpu.device.sm_count, quick).annotate(slice=real_slice, card=gpu.spec.key))


def summarize(rows: list[dict]) -> dict:
    """The card's fragmentation table (mfugap.mig): per full layout, SMs used, SMs idle and the whole-GPU
    MFU ceiling 100 * sm_used / card SMs."""
    cards = {row["params"].get("card") for row in rows} - {None}
    if len(cards) != 1:
        return {}
    table = mig.fragmentation(mig.lookup(cards.pop()))
    return {lay.layout: {"sm_used": lay.sm_used, "sm_idle": lay.sm_idle,
                         "max_whole_gpu_mfu_pct": lay.max_whole_gpu_mfu_pct} for lay in table.layouts}
