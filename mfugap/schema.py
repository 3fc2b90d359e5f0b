"""The results file format, version 1: one JSON object per run, one row per measured case.

A run file holds provenance (who measured what, where, when) and rows. Every key below is always
present in a row; a value that could not be measured is null, with the reason in the matching
`*_note` key or in `reason`. Units are in the key names. Readers reject a file whose `schema` is not
SCHEMA_ID or whose `schema_version` is newer than SCHEMA_VERSION.
"""
from __future__ import annotations

SCHEMA_ID = "mfugap.results"
SCHEMA_VERSION = 1

RUN_FIELDS: dict[str, str] = {
    "schema": f'always "{SCHEMA_ID}"',
    "schema_version": "integer, bumped on any incompatible change",
    "mfugap_version": "package version that wrote the file",
    "git_commit": "full hex commit hash of the checkout that ran (null outside a git checkout)",
    "git_dirty": "true when the checkout had uncommitted changes to tracked files",
    "created_utc": "ISO 8601 UTC time the run finished, e.g. 2026-11-25T12:00:00Z",
    "command": "the command line that produced the run",
    "quick": "true for a --quick run (small sizes, short windows)",
    "gpu": "device identity and state: see GPU_FIELDS",
    "rows": "list of rows: see ROW_FIELDS",
    "lessons": "suite name -> short lesson text printed under that suite's rows",
    "summaries": "suite name -> what the suite's summarize(rows) derived from its rows (a ridge point)",
}

GPU_FIELDS: dict[str, str] = {
    "name": "NVML device name",
    "key": "hardware catalog key the name resolved to (null if unknown)",
    "slug": "folder name under results/ (results.gpu_slug of the name)",
    "uuid": "NVML UUID (GPU-... or MIG-...)",
    "pci_device_id": "PCI device id as hex string, e.g. 0x2330",
    "compute_capability": "e.g. 9.0",
    "sm_count": "SMs visible to the process",
    "memory_total_bytes": "device memory",
    "l2_bytes": "L2 cache size",
    "driver_version": "NVIDIA driver version",
    "cuda_driver_version": "CUDA version the driver supports, e.g. 13000",
    "cuda_runtime_version": "CUDA runtime CuPy uses",
    "sm_clock_max_mhz": "maximum SM clock (NVML)",
    "power_limit_w": "enforced power limit",
    "mig_mode": "true/false, null where the GPU has no MIG",
    "mig_profile": "profile name when the process runs on a MIG instance",
    "peaks_tflops": "dense peak per precision used as MFU denominator (scaled to the slice on MIG)",
    "whole_gpu_peaks_tflops": "the whole card's dense peaks: on a MIG instance or an emulated slice the "
                              "parent's, else equal to peaks_tflops",
    "mem_bw_gbps": "datasheet memory bandwidth used as MBU denominator",
    "peaks_derived": "true when peaks were derived from SMs x per-SM rate x max clock (GPU not in catalog)",
    "peaks_source": "where the peaks come from",
}

ROW_FIELDS: dict[str, str] = {
    "suite": "suite the case belongs to, e.g. foundation",
    "workload": "workload family and variant, e.g. stream_triad",
    "label": "short human label of the case",
    "precision": "math precision whose peak is the MFU denominator (fp32, bf16, ...; none for no math)",
    "params": "the case's shape parameters (dict)",
    "status": "ok | failed (verification) | skipped | error",
    "reason": "why a case is not ok (null when ok)",
    "flops": "model FLOPs of one launch, counted from the shape",
    "bytes": "minimum DRAM bytes of one launch (each input read once, each output written once)",
    "max_rel_err": "verification error ||out - ref|| / ||ref|| (null for workloads checked otherwise)",
    "tolerance": "the bound max_rel_err had to stay under",
    "reps": "timed launches in the window",
    "launches_per_call": "launches per timed call: 1 from Python one by one; more when a short launch "
                         "was captured that many times into a CUDA graph and replayed",
    "timing_note": "how the launches were issued when that differs from the plan (e.g. capture failed)",
    "kernel_ms_median": "median time of one launch, CUDA events around it (a launch shorter than the "
                        "host's own launch work, ~10 us from Python, includes that work)",
    "kernel_ms_p10": "10th percentile launch time",
    "kernel_ms_p90": "90th percentile launch time",
    "window_s": "wall time of the measurement window, first launch start to last launch end",
    "tflops": "achieved model TFLOP/s over the window (the number MFU uses)",
    "kernel_tflops": "model TFLOP/s of the median launch (kernel-only efficiency)",
    "gbps": "achieved minimum-bytes GB/s over the window",
    "kernel_gbps": "minimum-bytes GB/s of the median launch",
    "peak_tflops": "dense datasheet peak of `precision` on this GPU",
    "peak_clock_tflops": "SMs x per-SM rate x mean observed SM clock",
    "mfu_pct": "tflops / peak_tflops",
    "mfu_clock_pct": "tflops / peak_clock_tflops",
    "kernel_mfu_pct": "kernel_tflops / peak_tflops",
    "mfu_alt_pct": "precision -> MFU against another precision's peak (e.g. fp32 rungs vs bf16)",
    "mbu_pct": "gbps / datasheet bandwidth",
    "intensity_flop_per_byte": "flops / bytes (null when bytes is 0)",
    "roofline_tflops": "min(peak, intensity x bandwidth)",
    "roofline_pct": "tflops / roofline_tflops: how close to what the roofline allows",
    "gpu_util_pct": "mean NVML GPU-Util over samples inside the window (null on MIG: see util_note)",
    "util_samples": "NVML samples that fell inside the window",
    "util_note": "why gpu_util_pct is null, if it is",
    "mem_util_pct": "mean NVML memory-controller utilization",
    "sm_util_pct": "GPM SM_UTIL over the window",
    "sm_occupancy_pct": "GPM SM_OCCUPANCY",
    "tensor_util_pct": "GPM ANY_TENSOR_UTIL",
    "dram_util_pct": "GPM DRAM_BW_UTIL",
    "fp32_util_pct": "GPM FP32_UTIL",
    "fp16_util_pct": "GPM FP16_UTIL",
    "fp64_util_pct": "GPM FP64_UTIL",
    "gpm_note": "why the GPM values are null, if they are",
    "gap_pts": "gpu_util_pct - mfu_pct, percentage points",
    "sm_clock_mhz": "mean SM clock over the window",
    "power_w": "mean board power over the window: energy counter difference / window time; where the "
               "GPU has no counter, the mean of polled nvmlDeviceGetPowerUsage (itself a trailing 1 s "
               "average on Ampere and newer)",
    "clock_event_reasons": "OR of NVML clock-event (throttle) reason bits seen in the window; null where "
                           "the query is not supported",
    "other_processes": "compute processes besides this one on the GPU (NVML), the most seen at the "
                       "window's start or end; null where NVML cannot list them",
    "sampler_overhead_pct": "sampler thread CPU time / window time",
    "flags": "list of warnings: mfu_above_util, throttle:<reason>, other_processes, few_util_samples, "
             "python_launch_bound",
}


def empty_row() -> dict:
    """A row with every field present and unmeasured."""
    row = dict.fromkeys(ROW_FIELDS)
    row["params"] = {}
    row["mfu_alt_pct"] = {}
    row["flags"] = []
    return row
