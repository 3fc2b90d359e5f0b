"""The formulas of DESIGN.md, one function each; every row's derived numbers come from here.

Rates use the measured time in the denominator, so a longer time always gives a smaller rate:
never take the min of times and call it a max of rates by hand.
"""
from __future__ import annotations

import math
from typing import Any

# NVML clock-event reason bits (nvmlClocksEventReasons) that mean the clock was pulled down.
THROTTLE_BITS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}


def rate_per_s(amount: float, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0 or not math.isfinite(seconds):
        return None
    return amount / seconds


def tflops(flops: float, seconds: float | None) -> float | None:
    rate = rate_per_s(flops, seconds)
    return None if rate is None else rate / 1e12


def gbps(nbytes: float, seconds: float | None) -> float | None:
    rate = rate_per_s(nbytes, seconds)
    return None if rate is None else rate / 1e9


def pct(achieved: float | None, peak: float | None) -> float | None:
    """achieved / peak in percent; None when either side is unknown."""
    if achieved is None or peak is None or peak <= 0:
        return None
    return 100.0 * achieved / peak


def mfu_pct(achieved_tflops: float | None, peak_tflops: float | None, flops: int) -> float | None:
    # A workload with no model math has MFU 0 whatever the denominator: that is the point of a spin.
    if flops == 0 and achieved_tflops is not None:
        return 0.0
    return pct(achieved_tflops, peak_tflops)


def intensity(flops: int, nbytes: int) -> float | None:
    """Arithmetic intensity in FLOP per byte of minimum DRAM traffic."""
    return None if nbytes <= 0 else flops / nbytes


def roofline_tflops(peak_tflops: float | None, bw_gbps: float | None,
                    flop_per_byte: float | None) -> float | None:
    """Attainable TFLOP/s = min(peak, intensity x bandwidth); GB/s x FLOP/B = GFLOP/s."""
    if peak_tflops is None:
        return None
    if flop_per_byte is None or bw_gbps is None:
        return peak_tflops
    return min(peak_tflops, flop_per_byte * bw_gbps / 1e3)


def gap_pts(util_pct: float | None, mfu: float | None) -> float | None:
    if util_pct is None or mfu is None:
        return None
    return util_pct - mfu


def throttle_reasons(mask: int | None) -> list[str]:
    if not mask:
        return []
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit]


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty list (q in [0, 100])."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def row_flags(*, mfu: float | None, util_pct: float | None, clock_event_reasons: int | None,
              other_processes: int | None, util_samples: int | None, is_mig: bool) -> list[str]:
    flags = []
    if mfu is not None and util_pct is not None and mfu > util_pct:
        flags.append("mfu_above_util")
    flags += [f"throttle:{name}" for name in throttle_reasons(clock_event_reasons)]
    if other_processes:
        flags.append("other_processes")
    if not is_mig and util_samples is not None and util_samples < 3:
        flags.append("few_util_samples")
    return flags


def derive(*, flops: int, nbytes: int, kernel_s: float, window_s: float, reps: int,
           peak_tflops: float | None, peak_clock_tflops: float | None, bw_gbps: float | None,
           alt_peaks: dict[str, float | None] | None = None) -> dict:
    """Throughput and utilization figures of one measured case (row keys of mfugap.schema)."""
    achieved = tflops(flops * reps, window_s)
    kernel = tflops(flops, kernel_s)
    flop_per_byte = intensity(flops, nbytes)
    ceiling = roofline_tflops(peak_tflops, bw_gbps, flop_per_byte)
    return {
        "tflops": achieved,
        "kernel_tflops": kernel,
        "gbps": gbps(nbytes * reps, window_s),
        "kernel_gbps": gbps(nbytes, kernel_s),
        "peak_tflops": peak_tflops,
        "peak_clock_tflops": peak_clock_tflops,
        "mfu_pct": mfu_pct(achieved, peak_tflops, flops),
        "mfu_clock_pct": mfu_pct(achieved, peak_clock_tflops, flops),
        "kernel_mfu_pct": mfu_pct(kernel, peak_tflops, flops),
        "mfu_alt_pct": {p: mfu_pct(achieved, peak, flops) for p, peak in (alt_peaks or {}).items()},
        "mbu_pct": pct(gbps(nbytes * reps, window_s), bw_gbps),
        "intensity_flop_per_byte": flop_per_byte,
        "roofline_tflops": ceiling,
        "roofline_pct": None if flops == 0 else pct(achieved, ceiling),
    }


def percent_of(rows: list[dict], reference: str, key: str, same: tuple[str, ...] = ()) -> dict[str, float]:
    """Each row's `key` as a percentage of the `reference` workload's row that shares the fields in
    `same` (a row field, or a param name): a rung against cuBLAS, a STREAM kernel against memcpy."""
    def match(row: dict) -> tuple:
        return tuple(row.get(f, row["params"].get(f)) for f in same)

    refs = {match(r): r[key] for r in rows if r["workload"] == reference and r[key]}
    return {r["label"]: 100.0 * r[key] / refs[match(r)] for r in rows
            if r["workload"] != reference and r[key] is not None and match(r) in refs}


def find_row(rows: list[dict], workload: str, **fields: Any) -> dict | None:
    """The first row of `workload` whose fields (a row field, or a param) equal `fields`, or None."""
    def matches(row: dict) -> bool:
        return all(row.get(k, row["params"].get(k)) == v for k, v in fields.items())

    return next((row for row in rows if row["workload"] == workload and matches(row)), None)


def goal(measured: float | None, *, at_least: float | None = None, at_most: float | None = None) -> str:
    """A target read off a measurement: '93.1 (met: >= 90)', '71.2 (missed: >= 75)' or 'not measured'."""
    if measured is None:
        return "not measured"
    met = (at_least is None or measured >= at_least) and (at_most is None or measured <= at_most)
    limit = at_least if at_least is not None else at_most
    bound = f">= {at_least:g}" if at_least is not None else f"<= {at_most:g}"
    return f"{_apart(measured, limit)} ({'met' if met else 'missed'}: {bound})"


def _apart(value: float, limit: float | None) -> str:
    """value to three significant digits, or as many more as it takes not to read as the limit itself
    (74.96 against 75 is '74.96', not a '75' that missed '>= 75')."""
    for digits in range(3, 17):
        text = f"{value:.{digits}g}"
        if value == limit or float(text) != limit:
            return text
    return repr(value)
