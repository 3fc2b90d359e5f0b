"""Hardware catalog: dense datasheet peaks per GPU, per-SM rates per architecture, and name resolution.

Every number comes from /work/shared/hardware-reference.md (sections 1-3) and carries its source keys.
All tensor peaks are DENSE: Hopper, L4 and Blackwell datasheets print 2:4-sparse figures, which are twice
the rate any real GEMM can reach, so only the halved values are stored here.

`resolve()` maps an NVML device name (plus, where known, the PCI device id) to the peaks that are the MFU
denominator. MIG slices scale the parent's peaks by their SM count. A GPU missing from the catalog gets
peaks derived from SMs x per-SM rate x max SM clock, flagged `derived=True`, instead of a wrong guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

PRECISIONS = ("fp64", "fp64_tc", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")

Peaks = dict[str, float | None]


@dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """One catalog row: a GPU model's identity, datasheet clocks and dense peaks (TFLOP/s or TOP/s)."""

    key: str
    name: str
    nvml_names: tuple[str, ...]
    pci_device_ids: tuple[int, ...] = ()
    compute_capability: tuple[int, int]
    sm_count: int
    boost_mhz: int | None
    tensor_mhz: int | None  # the clock the datasheet's tensor peaks assume (H100 SXM: 1830, not 1980)
    memory_gb: float
    mem_bw_gbps: float | None
    peaks_tflops: Peaks
    mig_profiles: dict[str, int] = field(default_factory=dict)  # profile name -> SMs in the slice
    source: str
    provisional: bool = False  # some figure rests on a third-party site only, or is unverified


def _peaks(**tflops: float | None) -> Peaks:
    """A peaks dict over all of PRECISIONS; a precision left out is math the card does not have."""
    unknown = set(tflops) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precisions {sorted(unknown)}; expected some of {PRECISIONS}")
    return {p: None if tflops.get(p) is None else float(tflops[p]) for p in PRECISIONS}


# Per-SM rates, FLOP (or int op) per clock per SM, an FMA counting 2 (hardware-reference.md section 2).
# GA10x (8.6) and Ada (8.9) hold the professional-card figures. GeForce parts (RTX 3090/4090) run TF32,
# FP16/BF16 with FP32 accumulate and FP8 at half these rates (the L40 halves its INT8 too), so a derived
# peak for such a card overstates its tensor math by 2x; their catalog rows hold their own figures.
ARCH_RATES: dict[tuple[int, int], dict[str, int | None]] = {
    (7, 0): {"fp64": 64, "fp64_tc": None, "fp32": 128, "tf32": None,  # Volta: FP16-only tensor cores
             "bf16": None, "fp16": 1024, "fp8": None, "int8": None},
    (7, 5): {"fp64": 4, "fp64_tc": None, "fp32": 128, "tf32": None,  # Turing: no BF16, no TF32
             "bf16": None, "fp16": 1024, "fp8": None, "int8": 2048},
    (8, 0): {"fp64": 64, "fp64_tc": 128, "fp32": 128, "tf32": 1024,
             "bf16": 2048, "fp16": 2048, "fp8": None, "int8": 4096},
    (8, 6): {"fp64": 4, "fp64_tc": None, "fp32": 256, "tf32": 512,
             "bf16": 1024, "fp16": 1024, "fp8": None, "int8": 2048},
    (8, 9): {"fp64": 4, "fp64_tc": None, "fp32": 256, "tf32": 512,
             "bf16": 1024, "fp16": 1024, "fp8": 2048, "int8": 2048},
    (9, 0): {"fp64": 128, "fp64_tc": 256, "fp32": 256, "tf32": 2048,
             "bf16": 4096, "fp16": 4096, "fp8": 8192, "int8": 8192},
    (10, 0): {"fp64": 128, "fp64_tc": 128, "fp32": 256, "tf32": 4096,  # derived, provisional
              "bf16": 8192, "fp16": 8192, "fp8": 16384, "int8": 16384},
}

# MIG slice SM counts from real `nvidia-smi mig -lgip` output (hardware-reference.md section 3).
_MIG_A100_40GB = {"1g.5gb": 14, "1g.10gb": 14, "2g.10gb": 28, "3g.20gb": 42, "4g.20gb": 56, "7g.40gb": 98}
_MIG_A100_80GB = {"1g.10gb": 14, "1g.20gb": 14, "2g.20gb": 28, "3g.40gb": 42, "4g.40gb": 56, "7g.80gb": 98}
_MIG_H100_80GB = {"1g.10gb": 16, "1g.20gb": 26, "2g.20gb": 32, "3g.40gb": 60, "4g.40gb": 64, "7g.80gb": 132}
_MIG_H100_NVL = {"1g.12gb": 16, "1g.24gb": 26, "2g.24gb": 32, "3g.47gb": 60}
_MIG_H200 = {"1g.18gb": 16, "1g.35gb": 26, "2g.35gb": 32, "3g.71gb": 60, "4g.71gb": 64, "7g.141gb": 132}
_MIG_B200 = {"1g.23gb": 18, "1g.45gb": 30, "2g.45gb": 36}  # larger B200 profiles not yet verified

# Table order of hardware-reference.md section 1. GeForce rows (RTX 4090, RTX 3090) store the FP32-accumulate
# BF16/FP16 figure: training accumulates in FP32, and the FP16-accumulate rate is twice that.
_CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec(
        key="v100-sxm2", name="V100 SXM2", nvml_names=("Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"),
        compute_capability=(7, 0), sm_count=80, boost_mhz=1530, tensor_mhz=1530,
        memory_gb=32,  # the 16 GB board shares every other figure; memory only scales MIG, which V100 lacks
        mem_bw_gbps=900,
        peaks_tflops=_peaks(fp64=7.8, fp32=15.7, fp16=125),  # FP16-only tensor cores
        source="LT, JXs",
    ),
    GpuSpec(
        key="t4", name="T4", nvml_names=("Tesla T4",),
        compute_capability=(7, 5), sm_count=40, boost_mhz=1590, tensor_mhz=1590,
        memory_gb=16, mem_bw_gbps=320,
        peaks_tflops=_peaks(fp64=0.25, fp32=8.1, fp16=65, int8=130),
        source="LT",
    ),
    GpuSpec(
        key="a10", name="A10", nvml_names=("NVIDIA A10",),
        compute_capability=(8, 6), sm_count=72, boost_mhz=1695, tensor_mhz=1695,
        memory_gb=24, mem_bw_gbps=600,
        peaks_tflops=_peaks(fp32=31.2, tf32=62.5, bf16=125, fp16=125, int8=250),
        source="LT",
    ),
    GpuSpec(
        # The reference lists the A10G only as a name in the A10 row, with no figures of its own: its own
        # entry keeps A10G results apart from A10 ones, but the numbers are the A10's until verified.
        key="a10g", name="A10G", nvml_names=("NVIDIA A10G",),
        compute_capability=(8, 6), sm_count=72, boost_mhz=1695, tensor_mhz=1695,
        memory_gb=24, mem_bw_gbps=600,
        peaks_tflops=_peaks(fp32=31.2, tf32=62.5, bf16=125, fp16=125, int8=250),
        source="LT (A10 row; no separate A10G figures)", provisional=True,
    ),
    GpuSpec(
        key="a100-40gb", name="A100 40GB SXM / PCIe",
        nvml_names=("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
        compute_capability=(8, 0), sm_count=108, boost_mhz=1410, tensor_mhz=1410,
        memory_gb=40, mem_bw_gbps=1555,
        peaks_tflops=_peaks(fp64=9.7, fp64_tc=19.5, fp32=19.5, tf32=156, bf16=312, fp16=312, int8=624),
        mig_profiles=_MIG_A100_40GB,
        source="LT, GK, NVF",
    ),
    GpuSpec(
        key="a100-sxm-80gb", name="A100 80GB SXM", nvml_names=("NVIDIA A100-SXM4-80GB",),
        compute_capability=(8, 0), sm_count=108, boost_mhz=1410, tensor_mhz=1410,
        memory_gb=80, mem_bw_gbps=2039,
        peaks_tflops=_peaks(fp64=9.7, fp64_tc=19.5, fp32=19.5, tf32=156, bf16=312, fp16=312, int8=624),
        mig_profiles=_MIG_A100_80GB,
        source="GK",
    ),
    GpuSpec(
        # older drivers name it "NVIDIA A100-PCIE-80GB"
        key="a100-pcie-80gb", name="A100 80GB PCIe",
        nvml_names=("NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-80GB"),
        compute_capability=(8, 0), sm_count=108, boost_mhz=1410, tensor_mhz=1410,
        memory_gb=80, mem_bw_gbps=1940,  # "~1940" in the reference
        peaks_tflops=_peaks(fp64=9.7, fp64_tc=19.5, fp32=19.5, tf32=156, bf16=312, fp16=312, int8=624),
        mig_profiles=_MIG_A100_80GB,
        source="GK",
    ),
    GpuSpec(
        # A30 supports MIG, but no slice SM counts are verified: MIG peaks need the runtime SM count.
        key="a30", name="A30", nvml_names=("NVIDIA A30",), pci_device_ids=(0x20B7,),
        compute_capability=(8, 0), sm_count=56, boost_mhz=1440, tensor_mhz=1440,
        memory_gb=24, mem_bw_gbps=933,
        peaks_tflops=_peaks(fp64=5.2, fp64_tc=10.3, fp32=10.3, tf32=82, bf16=165, fp16=165, int8=330),
        source="3p + d", provisional=True,
    ),
    GpuSpec(
        key="l4", name="L4", nvml_names=("NVIDIA L4",),
        compute_capability=(8, 9), sm_count=58, boost_mhz=2040, tensor_mhz=2040,
        memory_gb=24, mem_bw_gbps=300,
        peaks_tflops=_peaks(fp32=30.3, tf32=60, bf16=121, fp16=121, fp8=242.5, int8=242.5),
        source="L4DS, LT (SMs d)",
    ),
    GpuSpec(
        # The L40 runs tensor math at half the Ada per-SM rate (like GeForce): its figures are its own.
        key="l40", name="L40", nvml_names=("NVIDIA L40",),
        compute_capability=(8, 9), sm_count=142, boost_mhz=2490, tensor_mhz=2490,
        memory_gb=48, mem_bw_gbps=864,
        peaks_tflops=_peaks(fp32=90.5, tf32=90.5, bf16=181, fp16=181, fp8=362, int8=362),
        source="LDS, LT",
    ),
    GpuSpec(
        # The sheet's BF16 362 looks computed at 2490 MHz; at 2520 MHz it would be 366.4 (d). Sheet kept.
        key="l40s", name="L40S", nvml_names=("NVIDIA L40S",),
        compute_capability=(8, 9), sm_count=142, boost_mhz=2520, tensor_mhz=2520,
        memory_gb=48, mem_bw_gbps=864,
        peaks_tflops=_peaks(fp32=91.6, tf32=183, bf16=362, fp16=362, fp8=733, int8=733),
        source="LDS, TT",
    ),
    GpuSpec(
        # PCI ids 0x2330 (H100 SXM5 80GB) and 0x2331 (H100 PCIe): pci.ids, the PCI ID Repository
        key="h100-sxm", name="H100 SXM", nvml_names=("NVIDIA H100 80GB HBM3",), pci_device_ids=(0x2330,),
        compute_capability=(9, 0), sm_count=132, boost_mhz=1980, tensor_mhz=1830,
        memory_gb=80, mem_bw_gbps=3350,
        peaks_tflops=_peaks(fp64=34, fp64_tc=67, fp32=67, tf32=494.7,
                            bf16=989.4, fp16=989.4, fp8=1979, int8=1979),
        mig_profiles=_MIG_H100_80GB,
        source="H100DS, LT, TT, DQ",
    ),
    GpuSpec(
        # H100 PCIe supports MIG, but its slice SM counts are unverified (the MIG table's H100 80GB row is
        # the SXM's 132-SM die): MIG peaks on it need the runtime SM count.
        # Some clouds' drivers name it "NVIDIA H100 80GB HBM2e": HBM2e is the PCIe card's memory.
        key="h100-pcie", name="H100 PCIe", nvml_names=("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM2e"),
        pci_device_ids=(0x2331,),
        compute_capability=(9, 0), sm_count=114, boost_mhz=1755, tensor_mhz=1620,
        memory_gb=80, mem_bw_gbps=2000,
        peaks_tflops=_peaks(fp64=25.6, fp64_tc=51, fp32=51, tf32=378,
                            bf16=756, fp16=756, fp8=1513, int8=1513),
        source="H100DS, LT, NVF",
    ),
    GpuSpec(
        key="h100-nvl", name="H100 NVL", nvml_names=("NVIDIA H100 NVL",), pci_device_ids=(0x2321,),
        compute_capability=(9, 0), sm_count=132, boost_mhz=None, tensor_mhz=None,
        memory_gb=94, mem_bw_gbps=3900,
        peaks_tflops=_peaks(fp64=30, fp64_tc=60, fp32=60, tf32=417.5,
                            bf16=835.5, fp16=835.5, fp8=1670.5, int8=1670.5),
        mig_profiles=_MIG_H100_NVL,
        source="LT (SMs, BW 3p; FP8 d)", provisional=True,
    ),
    GpuSpec(
        # NVIDIA's driver README ("Compatible GPUs") lists 0x2335 as "NVIDIA H200" (SXM) and 0x233B as the
        # H200 NVL; hardware-reference.md gives 0x2335 to the NVL, which would hand an H200 SXM NVL peaks.
        key="h200-sxm", name="H200 SXM", nvml_names=("NVIDIA H200", "NVIDIA H200 141GB HBM3e"),
        pci_device_ids=(0x2335,),
        compute_capability=(9, 0), sm_count=132, boost_mhz=None, tensor_mhz=None,
        memory_gb=141, mem_bw_gbps=4800,
        peaks_tflops=_peaks(fp64=34, fp64_tc=67, fp32=67, tf32=494.5,
                            bf16=989.5, fp16=989.5, fp8=1979, int8=1979),
        mig_profiles=_MIG_H200,
        source="LT, TT, MP (FP8 d)",
    ),
    GpuSpec(
        # The H200 NVL has MIG too, but the reference's H200 row is the SXM's: no verified NVL slice table.
        key="h200-nvl", name="H200 NVL", nvml_names=("NVIDIA H200 NVL",), pci_device_ids=(0x233B,),
        compute_capability=(9, 0), sm_count=132, boost_mhz=None, tensor_mhz=None,
        memory_gb=141, mem_bw_gbps=4800,
        peaks_tflops=_peaks(fp64=30, fp64_tc=60, fp32=60, tf32=420, bf16=840, fp16=840, fp8=1680, int8=1680),
        source="LT, RP (BW 3p; FP8 d)", provisional=True,
    ),
    GpuSpec(
        # Peaks are the H100 SXM's (same die and SM count); the GH200's own tensor clock and bandwidth are
        # unverified. 96 GB HBM3 board; a 144 GB HBM3e variant exists.
        key="gh200", name="GH200 (GPU)", nvml_names=("NVIDIA GH200 480GB",),
        compute_capability=(9, 0), sm_count=132, boost_mhz=1980, tensor_mhz=None,
        memory_gb=96, mem_bw_gbps=None,
        peaks_tflops=_peaks(fp64=34, fp64_tc=67, fp32=67, tf32=494.7,
                            bf16=989.4, fp16=989.4, fp8=1979, int8=1979),
        source="PC; peaks H100 SXM rates (d)", provisional=True,
    ),
    GpuSpec(
        key="b200", name="B200", nvml_names=("NVIDIA B200",), pci_device_ids=(0x2901,),
        compute_capability=(10, 0), sm_count=148, boost_mhz=None, tensor_mhz=None,
        memory_gb=180, mem_bw_gbps=7700,  # early sheets said 8000
        peaks_tflops=_peaks(fp64=37, fp64_tc=37, fp32=75, tf32=1100,
                            bf16=2250, fp16=2250, fp8=4500, int8=4500),
        mig_profiles=_MIG_B200,
        source="TT, DC, GK (provisional)", provisional=True,
    ),
    GpuSpec(
        key="gb200", name="GB200 (per GPU)", nvml_names=("NVIDIA GB200",), pci_device_ids=(0x2941,),
        compute_capability=(10, 0), sm_count=152, boost_mhz=None, tensor_mhz=None,  # SMs unverified
        memory_gb=186, mem_bw_gbps=8000,
        peaks_tflops=_peaks(fp64=45, fp64_tc=45, fp32=90, tf32=1250,
                            bf16=2500, fp16=2500, fp8=5000, int8=5000),
        source="TT, GK (provisional)", provisional=True,
    ),
    GpuSpec(
        # GeForce: BF16/FP16 165.2 is the FP32-accumulate rate (330.3 with FP16 accumulate)
        key="rtx-4090", name="RTX 4090", nvml_names=("NVIDIA GeForce RTX 4090",),
        compute_capability=(8, 9), sm_count=128, boost_mhz=2520, tensor_mhz=2520,
        memory_gb=24, mem_bw_gbps=1008,
        peaks_tflops=_peaks(fp64=1.3, fp32=82.6, tf32=82.6, bf16=165.2, fp16=165.2, fp8=330.3, int8=660.6),
        source="3p, CH, UNL", provisional=True,
    ),
    GpuSpec(
        # GeForce: BF16/FP16 71 is the FP32-accumulate rate (d; 142 with FP16 accumulate)
        key="rtx-3090", name="RTX 3090", nvml_names=("NVIDIA GeForce RTX 3090",),
        compute_capability=(8, 6), sm_count=82, boost_mhz=1695, tensor_mhz=1695,
        memory_gb=24, mem_bw_gbps=936,
        peaks_tflops=_peaks(fp64=0.56, fp32=35.6, tf32=35.6, bf16=71, fp16=71, int8=284),
        source="CH, 3p", provisional=True,
    ),
    GpuSpec(
        key="rtx-6000-ada", name="RTX 6000 Ada", nvml_names=("NVIDIA RTX 6000 Ada Generation",),
        compute_capability=(8, 9), sm_count=142, boost_mhz=2505, tensor_mhz=2505,
        memory_gb=48, mem_bw_gbps=960,
        peaks_tflops=_peaks(fp32=91.1, tf32=182, bf16=364, fp16=364, fp8=728.5, int8=728.5),
        source="3p, RP (tensor peaks d)", provisional=True,
    ),
)

_BY_KEY = {spec.key: spec for spec in _CATALOG}
_BY_PCI_ID = {pci: spec for spec in _CATALOG for pci in spec.pci_device_ids}

# Name rules, most specific first, matched on whole tokens: a substring test would send "l40s" to L4 and
# "a100" to A10. A rule matches when all its tokens are in the name.
_TOKEN_RULES: tuple[tuple[frozenset[str], str], ...] = tuple(
    (frozenset(tokens.split()), key)
    for tokens, key in (
        ("gb200", "gb200"),
        ("gh200", "gh200"),
        ("b200", "b200"),
        ("h200 nvl", "h200-nvl"),
        ("h200", "h200-sxm"),
        ("h100 nvl", "h100-nvl"),
        ("h100 pcie", "h100-pcie"),
        ("h100 hbm2e", "h100-pcie"),
        ("h100", "h100-sxm"),
        ("l40s", "l40s"),
        ("l40", "l40"),
        ("l4", "l4"),
        ("a100 80gb pcie", "a100-pcie-80gb"),
        ("a100 80gb", "a100-sxm-80gb"),
        ("a100", "a100-40gb"),
        ("a10g", "a10g"),
        ("a10", "a10"),
        ("a30", "a30"),
        ("v100 sxm2", "v100-sxm2"),
        ("t4", "t4"),
        ("rtx 4090", "rtx-4090"),
        ("rtx 3090", "rtx-3090"),
        ("rtx 6000 ada", "rtx-6000-ada"),
    )
)
# Tokens that mark a different product with other SM counts and clocks (RTX 3090 Ti, RTX 4090 D, laptop
# parts, Max-Q): such names get a derived peak instead of borrowing the base card's.
_VARIANT_TOKENS = frozenset({"ti", "d", "laptop", "mobile", "max", "q", "super"})

_MIG_NAME = re.compile(r"^(?P<parent>.*?)\s+mig\s+(?P<profile>\S+)$", re.IGNORECASE)
_PROFILE_GB = re.compile(r"(\d+(?:\.\d+)?)gb$", re.IGNORECASE)


def _normalize(name: str) -> str:
    """Lowercase, single spaces, no leading "nvidia " (old drivers drop it)."""
    text = " ".join(name.split()).lower()
    return text.removeprefix("nvidia ")


_BY_NVML_NAME = {_normalize(n): spec for spec in _CATALOG for n in spec.nvml_names}


def _tokens(normalized: str) -> frozenset[str]:
    return frozenset(t for t in re.split(r"[^a-z0-9]+", normalized) if t)


def _lookup(name: str, pci_device_id: int | None) -> GpuSpec | None:
    """The catalog entry for a whole GPU: PCI device id first, then exact NVML name, then token rules."""
    if pci_device_id in _BY_PCI_ID:
        return _BY_PCI_ID[pci_device_id]
    normalized = _normalize(name)
    if normalized in _BY_NVML_NAME:
        return _BY_NVML_NAME[normalized]
    tokens = _tokens(normalized)
    if tokens & _VARIANT_TOKENS:
        return None
    for required, key in _TOKEN_RULES:
        if required <= tokens:
            return _BY_KEY[key]
    return None


def _arch_rates(compute_capability: tuple[int, int]) -> dict[str, int | None] | None:
    """Per-SM rates for a compute capability, falling back to the nearest tabulated sibling."""
    if compute_capability in ARCH_RATES:
        return ARCH_RATES[compute_capability]
    major, minor = compute_capability
    # 10.x includes 10.3 (B300), whose FP64 is cut far below B200's: derived FP64 there is an upper bound.
    fallback = {9: (9, 0), 10: (10, 0)}.get(major)
    if major == 8 and minor in (7, 8):  # Orin (8.7) and 8.8 share GA10x's SM
        fallback = (8, 6)
    return ARCH_RATES.get(fallback) if fallback else None


def clock_adjusted_peak_tflops(
    compute_capability: tuple[int, int], sm_count: int, sm_clock_mhz: float, precision: str
) -> float | None:
    """SMs x per-SM rate x SM clock, in TFLOP/s; None where the arch or the precision has no rate."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    rates = _arch_rates(compute_capability)
    rate = rates[precision] if rates else None
    if rate is None:
        return None
    return sm_count * rate * sm_clock_mhz / 1e6


@dataclass(frozen=True)
class Resolved:
    """What one device (whole GPU or MIG slice) resolved to: the MFU denominators and where they came from."""

    name: str
    key: str | None
    spec: GpuSpec | None
    sm_count: int
    mem_bw_gbps: float | None
    peaks_tflops: Peaks  # scaled to the slice on MIG
    whole_gpu_peaks_tflops: Peaks  # the parent's figures; equal to peaks_tflops when not MIG
    derived: bool
    mig_profile: str | None
    source: str
    compute_capability: tuple[int, int] | None


class UnknownGpuError(ValueError):
    """A GPU (or MIG profile) the catalog does not know, with too little information to derive its peaks."""


def _cc_text(compute_capability: tuple[int, int] | None) -> str | None:
    return None if compute_capability is None else f"{compute_capability[0]}.{compute_capability[1]}"


def _from_spec(name: str, spec: GpuSpec) -> Resolved:
    return Resolved(
        name=name, key=spec.key, spec=spec, sm_count=spec.sm_count, mem_bw_gbps=spec.mem_bw_gbps,
        peaks_tflops=dict(spec.peaks_tflops), whole_gpu_peaks_tflops=dict(spec.peaks_tflops),
        derived=False, mig_profile=None, source=spec.source, compute_capability=spec.compute_capability,
    )


def _derive(
    name: str,
    sm_count: int | None,
    compute_capability: tuple[int, int] | None,
    max_sm_clock_mhz: float | None,
) -> Resolved:
    """Peaks for a GPU the catalog lacks: SMs x per-SM rate x max SM clock, flagged as derived."""
    if sm_count is None or compute_capability is None or max_sm_clock_mhz is None:
        raise UnknownGpuError(
            f"GPU {name!r} is not in the mfugap catalog; pass compute_capability, sm_count and "
            "max_sm_clock_mhz to derive its peaks (SMs x per-SM rate x max SM clock)"
        )
    if _arch_rates(compute_capability) is None:
        raise UnknownGpuError(
            f"GPU {name!r} is not in the mfugap catalog and compute capability "
            f"{_cc_text(compute_capability)} has no per-SM rates to derive its peaks from"
        )
    peaks = {p: clock_adjusted_peak_tflops(compute_capability, sm_count, max_sm_clock_mhz, p)
             for p in PRECISIONS}
    return Resolved(
        name=name, key=None, spec=None, sm_count=sm_count, mem_bw_gbps=None,
        peaks_tflops=peaks, whole_gpu_peaks_tflops=dict(peaks), derived=True, mig_profile=None,
        source=(f"derived: SMs x per-SM rate x max SM clock ({sm_count} SMs, compute capability "
                f"{_cc_text(compute_capability)}, {max_sm_clock_mhz:g} MHz)"),
        compute_capability=compute_capability,
    )


def _split_mig(name: str) -> tuple[str, str | None]:
    """Split "NVIDIA H100 80GB HBM3 MIG 1g.10gb" into parent name and profile; profile None if not MIG."""
    match = _MIG_NAME.match(name.strip())
    if match is None:
        return name, None
    return match["parent"], match["profile"]


def _mig_slice(name: str, parent: GpuSpec, profile: str, sm_count: int | None) -> Resolved:
    """The parent's peaks scaled to the slice's SMs, its bandwidth to the slice's share of memory."""
    # "+me" (media extensions) and similar suffixes do not change the slice's SMs or memory
    base_profile = profile.split("+")[0].lower()
    if sm_count is not None:
        slice_sms, origin = sm_count, "runtime multiprocessorCount"
    elif base_profile in parent.mig_profiles:
        slice_sms, origin = parent.mig_profiles[base_profile], "catalog MIG table"
    else:
        raise UnknownGpuError(
            f"MIG profile {profile!r} of {parent.name} has no verified SM count in the mfugap catalog; "
            "pass sm_count (the slice's multiprocessorCount) to scale the peaks"
        )
    fraction = slice_sms / parent.sm_count
    peaks = {p: None if v is None else v * fraction for p, v in parent.peaks_tflops.items()}
    mem_bw, bw_note = _slice_bandwidth(parent, base_profile)
    return Resolved(
        name=name, key=parent.key, spec=parent, sm_count=slice_sms, mem_bw_gbps=mem_bw,
        peaks_tflops=peaks, whole_gpu_peaks_tflops=dict(parent.peaks_tflops), derived=False,
        mig_profile=profile,
        source=f"{parent.source}; MIG {profile}: peaks x {slice_sms}/{parent.sm_count} SMs ({origin}); "
        f"{bw_note}",
        compute_capability=parent.compute_capability,
    )


def _slice_bandwidth(parent: GpuSpec, base_profile: str) -> tuple[float | None, str]:
    """A slice gets the share of DRAM bandwidth that its memory is of the whole GPU's (derived)."""
    match = _PROFILE_GB.search(base_profile)
    if match is None or parent.mem_bw_gbps is None:
        return None, "slice bandwidth unknown"
    slice_gb = float(match[1])
    return (parent.mem_bw_gbps * slice_gb / parent.memory_gb,
            f"slice bandwidth derived as {slice_gb:g}/{parent.memory_gb:g} GB of {parent.mem_bw_gbps:g} GB/s")


def resolve(
    name: str,
    pci_device_id: int | None = None,
    *,
    sm_count: int | None = None,
    compute_capability: tuple[int, int] | None = None,
    max_sm_clock_mhz: float | None = None,
) -> Resolved:
    """Resolve an NVML device name (and 16-bit PCI device id) to its dense peaks.

    MIG names ("<parent> MIG <profile>") scale the parent's peaks to the slice: `sm_count` (the slice's
    runtime multiprocessorCount) wins over the catalog's MIG table. A GPU the catalog lacks gets peaks
    derived from compute_capability, sm_count and max_sm_clock_mhz, or raises UnknownGpuError; so does a
    whole GPU whose runtime sm_count differs from its entry's (the name matched another card).
    """
    parent_name, profile = _split_mig(name)
    spec = _lookup(parent_name, pci_device_id)
    if spec is None:
        resolved = _derive(name, sm_count, compute_capability, max_sm_clock_mhz)
        if profile is None:
            return resolved
        # An unknown parent's slice: the derivation used the slice's own SMs, and the whole GPU is unknown.
        return replace(resolved, mig_profile=profile, whole_gpu_peaks_tflops=dict.fromkeys(PRECISIONS))
    if profile is None:
        if sm_count is not None and sm_count != spec.sm_count:
            return _other_card(name, spec, sm_count, compute_capability, max_sm_clock_mhz)
        return _from_spec(name, spec)
    return _mig_slice(name, spec, profile, sm_count)


def _other_card(name: str, spec: GpuSpec, sm_count: int, compute_capability: tuple[int, int] | None,
                max_sm_clock_mhz: float | None) -> Resolved:
    """A GPU whose name matched `spec` but whose SM count is another: not the card the entry describes
    (a cloud's own name for a PCIe card, say), so its peaks are derived from what it is, and its
    bandwidth is unknown. Where they cannot be derived, the entry stands, with the mismatch in its source."""
    mismatch = f"{name!r} matched {spec.name}, which has {spec.sm_count} SMs, but this GPU has {sm_count}"
    try:
        derived = _derive(name, sm_count, compute_capability, max_sm_clock_mhz)
    except UnknownGpuError:
        entry = _from_spec(name, spec)
        return replace(entry, source=f"{entry.source}; WARNING: {mismatch}: these peaks may not be its own")
    return replace(derived, source=f"{mismatch}: {derived.source}")


def catalog() -> list[GpuSpec]:
    """Every catalog entry, in the order of hardware-reference.md section 1."""
    return list(_CATALOG)


def spec_to_json(resolved: Resolved) -> dict:
    """A JSON-ready summary of a resolution, for the results file's `gpu` object."""
    return {
        "name": resolved.name,
        "key": resolved.key,
        "sm_count": resolved.sm_count,
        "mem_bw_gbps": resolved.mem_bw_gbps,
        "peaks_tflops": dict(resolved.peaks_tflops),
        "whole_gpu_peaks_tflops": dict(resolved.whole_gpu_peaks_tflops),
        "derived": resolved.derived,
        "mig_profile": resolved.mig_profile,
        "source": resolved.source,
        "compute_capability": _cc_text(resolved.compute_capability),
        "provisional": resolved.spec.provisional if resolved.spec else False,
    }


def specs_table() -> tuple[list[str], list[list]]:
    """Headers and one row per catalog entry, for printing the whole catalog (peaks in TFLOP/s)."""
    headers = ["GPU", "key", "SMs", "BW GB/s", *PRECISIONS, "MIG profiles", "provisional", "source"]
    rows = [
        [spec.name, spec.key, spec.sm_count, spec.mem_bw_gbps,
         *(spec.peaks_tflops[p] for p in PRECISIONS),
         len(spec.mig_profiles), "yes" if spec.provisional else "", spec.source]
        for spec in _CATALOG
    ]
    return headers, rows
