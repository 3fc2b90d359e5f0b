"""The harness: verify a workload, warm it up, time it over a window while NVML samples, derive the row.

Nothing here knows about particular kernels; anything that follows mfugap.workload.Workload is measured
the same way. A workload that fails verification records no numbers.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mfugap import catalog, metrics
from mfugap.device import DeviceInfo, discover, init_nvml
from mfugap.results import gpu_slug
from mfugap.sampler import Sampler
from mfugap.schema import empty_row
from mfugap.timing import MAX_AHEAD, CupyEvents, run_window, warm_up
from mfugap.workload import PRECISION_NONE, Check, Workload

GiB = 1 << 30
FREE_MEMORY_USE = 0.9  # leave room for cuBLAS workspaces and the allocator's rounding
# A Python launch costs the host ~10 us; launches this short are captured into a CUDA graph of about
# GRAPH_TARGET_MS and replayed, so the window times the GPU, not the interpreter.
GRAPH_BELOW_MS = 0.5
GRAPH_TARGET_MS = 10.0
MAX_GRAPH_LAUNCHES = 1000
MEDIAN_REPS = 3  # the fewest launches a median and spread are taken over


@dataclass(frozen=True)
class WindowConfig:
    window_s: float = 2.0  # several NVML sample periods (1/6 s to 1 s depending on the product)
    warmup_s: float = 0.3
    min_reps: int = 10
    # Launches so long that min_reps of them would pass this get fewer reps (never under MEDIAN_REPS):
    # a 2 s launch needs no 20 s window to be measured, and the whole run has a time budget.
    max_window_s: float = 8.0

    @classmethod
    def quick(cls) -> WindowConfig:
        # still ~4 NVML samples at the 1/6 s period of H100-class boards
        return cls(window_s=0.8, warmup_s=0.15, min_reps=5, max_window_s=3.0)

    def reps_for(self, call_s: float) -> int:
        """Launches the window needs at least, for calls of `call_s` seconds each."""
        if call_s * self.min_reps <= self.max_window_s:
            return self.min_reps
        return max(MEDIAN_REPS, math.floor(self.max_window_s / call_s))

    def ahead_for(self, call_s: float) -> int:
        """How far the host may run ahead of the device: never more than a window's worth of calls, so
        the host clock that ends the window does not leave many long calls queued behind it."""
        return max(1, min(MAX_AHEAD, math.floor(self.window_s / max(call_s, 1e-9))))


class GpuContext:
    """One GPU as this process sees it: identity, catalog peaks, NVML handles and a CUDA stream."""

    def __init__(self, device: DeviceInfo, spec: catalog.Resolved, nvml: Any, stream: Any) -> None:
        self.name = spec.name  # on a MIG instance, "<parent> MIG <profile>"
        self.device = device
        self.spec = spec
        self.nvml = nvml
        self.stream = stream

    @classmethod
    def open(cls, index: int = 0) -> GpuContext:
        """Discover GPU `index`; raises mfugap.device.NoGpuError when none is usable."""
        import cupy

        nvml = init_nvml()
        cupy.cuda.Device(index).use()
        device = discover(index, nvml=nvml)
        name = f"{device.name} MIG {device.mig_profile}" if device.is_mig else device.name
        spec = catalog.resolve(name, device.pci_device_id, sm_count=device.sm_count,
                               compute_capability=device.compute_capability,
                               max_sm_clock_mhz=device.sm_clock_max_mhz)
        return cls(device, spec, nvml, cupy.cuda.Stream(non_blocking=True))

    def partition(self, sm_count: int, stream: Any) -> GpuContext:
        """This GPU confined to `sm_count` SMs through `stream` (a green context): peaks scale with the
        SMs; memory bandwidth and L2 stay whole, because the partition shares them."""
        total = self.device.sm_count
        if not total or not 0 < sm_count <= total:
            raise ValueError(f"a partition needs 1..{total} SMs, got {sm_count}")
        peaks = {p: None if v is None else v * sm_count / total for p, v in self.spec.peaks_tflops.items()}
        spec = replace(self.spec, sm_count=sm_count, peaks_tflops=peaks,
                       source=f"{self.spec.source}; emulated slice: peaks x {sm_count}/{total} SMs")
        part = GpuContext(replace(self.device, sm_count=sm_count), spec, self.nvml, stream)
        part.name = self.name
        return part

    def broken(self) -> str | None:
        return context_broken()

    def free_bytes(self) -> int:
        """Free device memory, counting blocks CuPy's pool keeps cached from earlier cases as free."""
        import cupy

        return cupy.cuda.runtime.memGetInfo()[0] + cupy.get_default_memory_pool().free_bytes()

    def gpu_json(self) -> dict:
        """The run file's `gpu` object: identity and state, plus the denominators MFU and MBU use."""
        return {
            **self.device.to_json(),
            "name": self.name,
            "key": self.spec.key,
            "slug": gpu_slug(self.name),
            "peaks_tflops": self.spec.peaks_tflops,
            "whole_gpu_peaks_tflops": self.spec.whole_gpu_peaks_tflops,
            "mem_bw_gbps": self.spec.mem_bw_gbps,
            "peaks_derived": self.spec.derived,
            "peaks_source": self.spec.source,
        }

    def events(self) -> CupyEvents:
        return CupyEvents(self.stream)

    def capture(self, launch: Callable[[], None], count: int) -> Callable[[], None]:
        """`count` launches captured into one CUDA graph; the returned call replays it on the stream."""
        stream = self.stream
        stream.begin_capture()
        try:
            for _ in range(count):
                launch()
        finally:
            graph = stream.end_capture()
        return lambda: graph.launch(stream)

    def sampler(self) -> Sampler:
        d = self.device
        return Sampler(self.nvml, d.handle, is_mig=d.is_mig, parent_handle=d.parent_handle,
                       gpu_instance_id=d.gpu_instance_id)


def context_broken() -> str | None:
    """Why this process's CUDA context can run nothing more, or None. A kernel that faults (an illegal
    address, say) leaves a sticky error: every later CUDA call fails with it, so every later case would
    only repeat it."""
    import cupy

    try:
        cupy.cuda.runtime.deviceSynchronize()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        return str(exc)
    return None


def measure(workload: Workload, ctx: GpuContext, config: WindowConfig, suite: str) -> dict:
    """Measure one workload and return its row (mfugap.schema); never raises for a failing case, nor for
    one whose clean-up fails."""
    identity = _identity(workload, suite)
    reason = workload.unavailable(ctx.device.compute_capability)
    if reason:
        return _skipped(identity, reason)
    need, free = workload.footprint_bytes(), ctx.free_bytes()
    if need > FREE_MEMORY_USE * free:
        return _skipped(identity, f"needs {need / GiB:.1f} GiB, {free / GiB:.1f} GiB free")
    row = dict(identity)
    try:
        row = _measured(workload, ctx, config, row)
    except Exception as exc:  # a broken case becomes a row with its reason; the rest still runs
        row = _error(row, exc)
    try:
        workload.teardown()
    except Exception as exc:  # an error surfacing only now (a sticky CUDA error) taints the numbers too
        row = _error(identity, exc)
    return row


def _measured(workload: Workload, ctx: GpuContext, config: WindowConfig, row: dict) -> dict:
    """Set up, verify, time and sample: `row` (the case's identity) filled in, or why it failed."""
    verdict = verify(workload, ctx.stream)
    row.update(max_rel_err=verdict.rel_err, tolerance=verdict.tolerance)
    if not verdict.ok:
        return {**row, "status": "failed", "reason": verdict.detail}
    clock = ctx.events()
    launch = launcher(workload, ctx.stream)
    # verify() has launched it once already (module load, compilation), so one warm-up launch is
    # enough where a single launch outlasts warmup_s
    warm = warm_up(launch, clock, warmup_s=config.warmup_s, min_launches=1)
    batch = _batching(workload, ctx, launch, warm.last_s)
    if batch.launches > 1:
        replayed = verify_replay(workload, batch.call, ctx.stream)
        if not replayed.ok:
            return {**row, "status": "failed", "reason": f"the CUDA graph's replay: {replayed.detail}"}
    call_s = warm.last_s * batch.launches
    with ctx.sampler() as sampler:
        timing = run_window(batch.call, clock, min_window_s=config.window_s,
                            min_reps=config.reps_for(call_s), max_ahead=config.ahead_for(call_s))
    row.update(_timing_fields(timing, batch))
    row.update(sampler.stats.as_row_fields())
    row.update(_derived(workload, ctx, timing, batch, row))
    row["status"] = "ok"
    return row


def _error(row: dict, exc: Exception) -> dict:
    return {**row, "status": "error", "reason": one_line(exc)}


def one_line(exc: BaseException) -> str:
    """'<type>: <first line of the message>', or the type alone when the message is empty: a reason that
    fits a table cell or a report line."""
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _identity(workload: Workload, suite: str) -> dict:
    row = empty_row()
    row.update(suite=suite, workload=workload.name, label=workload.row_label, precision=workload.precision,
               params={**workload.params, **workload.notes}, flops=workload.flops(),
               bytes=workload.min_bytes())
    return row


def _skipped(row: dict, reason: str) -> dict:
    return {**row, "status": "skipped", "reason": reason}


def launcher(workload: Workload, stream: Any) -> Callable[[], None]:
    """One launch of `workload` with `stream` current, so CuPy work inside it goes where the events are:
    cuBLAS, for one, binds its handle to CuPy's current stream on every call."""
    def launch() -> None:
        with stream:
            workload.launch(stream)

    return launch


def verify(workload: Workload, stream: Any) -> Check:
    """Set up, poison, launch once, check. Inside `with stream` CuPy's own work (allocation, random
    fill, the poison) is ordered on that stream too; on the default stream the poison could race the
    launch on a non-blocking stream and hide unwritten outputs."""
    with stream:
        workload.setup(stream)
        workload.poison()
        workload.launch(stream)
        stream.synchronize()
        return workload.check()


def verify_replay(workload: Workload, replay: Callable[[], None], stream: Any) -> Check:
    """A captured graph replayed once on poisoned outputs and checked like the first launch: a capture
    that recorded other work than the launches fails here, and the graph's upload to the device (on its
    first launch) stays out of the window."""
    with stream:
        workload.poison()
        replay()
        stream.synchronize()
        return workload.check()


@dataclass(frozen=True)
class Batch:
    """What one timed call issues: `launches` launches of the workload, one by one or as a graph."""

    call: Callable[[], None]
    launches: int
    note: str | None = None


def _batching(workload: Workload, ctx: GpuContext, launch: Callable[[], None], launch_s: float) -> Batch:
    """Plain launches, or a CUDA graph of short ones (falling back, with the reason, if capture fails).
    `launch_s`: one warm launch's device time, from the warm-up."""
    launch_ms = launch_s * 1e3
    if not workload.graphable or launch_ms >= GRAPH_BELOW_MS:
        return Batch(launch, 1)
    count = min(MAX_GRAPH_LAUNCHES, max(2, math.ceil(GRAPH_TARGET_MS / max(launch_ms, 1e-3))))
    try:
        return Batch(ctx.capture(launch, count), count)
    except Exception as exc:  # a library that cannot be captured still gets measured, with the caveat
        note = f"CUDA graph capture failed ({one_line(exc)}): launched one by one from Python"
        return Batch(launch, 1, note)


def _timing_fields(timing: Any, batch: Batch) -> dict:
    per = batch.launches
    return {"reps": timing.reps * per, "launches_per_call": per, "timing_note": batch.note,
            "kernel_ms_median": timing.median_ms / per, "kernel_ms_p10": timing.p10_ms / per,
            "kernel_ms_p90": timing.p90_ms / per, "window_s": timing.window_s}


def _derived(workload: Workload, ctx: GpuContext, timing: Any, batch: Batch, row: dict) -> dict:
    precision = workload.precision
    peaks = ctx.spec.peaks_tflops
    peak = None if precision == PRECISION_NONE else peaks.get(precision)
    clock_peak = None
    if precision != PRECISION_NONE and row["sm_clock_mhz"] and ctx.device.sm_count \
            and ctx.device.compute_capability:
        clock_peak = catalog.clock_adjusted_peak_tflops(ctx.device.compute_capability, ctx.device.sm_count,
                                                        row["sm_clock_mhz"], precision)
    alt = {p: peaks.get(p) for p in workload.alt_precisions}
    out = metrics.derive(flops=workload.flops(), nbytes=workload.min_bytes(),
                         kernel_s=row["kernel_ms_median"] / 1e3, window_s=timing.window_s, reps=row["reps"],
                         peak_tflops=peak, peak_clock_tflops=clock_peak, bw_gbps=ctx.spec.mem_bw_gbps,
                         alt_peaks=alt)
    out["gap_pts"] = metrics.gap_pts(row["gpu_util_pct"], out["mfu_pct"])
    out["flags"] = metrics.row_flags(mfu=out["mfu_pct"], util_pct=row["gpu_util_pct"],
                                     clock_event_reasons=row["clock_event_reasons"],
                                     other_processes=row["other_processes"],
                                     util_samples=row["util_samples"], is_mig=ctx.device.is_mig)
    if batch.note:
        out["flags"].append("python_launch_bound")
    return out
