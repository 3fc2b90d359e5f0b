"""The hardware catalog: name and PCI id resolution, MIG scaling, derived peaks, and the data itself."""
from __future__ import annotations

import pytest

from mfugap.catalog import (
    ARCH_RATES,
    PRECISIONS,
    UnknownGpuError,
    catalog,
    clock_adjusted_peak_tflops,
    resolve,
    spec_to_json,
    specs_table,
)

SPECS = catalog()
BY_KEY = {spec.key: spec for spec in SPECS}

# Every NVML name hardware-reference.md section 1 lists, with the entry it must reach.
REFERENCE_NAMES = [
    ("Tesla V100-SXM2-16GB", "v100-sxm2"),
    ("Tesla V100-SXM2-32GB", "v100-sxm2"),
    ("Tesla T4", "t4"),
    ("NVIDIA A10", "a10"),
    ("NVIDIA A10G", "a10g"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("NVIDIA A30", "a30"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA L40", "l40"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200-sxm"),
    ("NVIDIA H200 141GB HBM3e", "h200-sxm"),
    ("NVIDIA H200 NVL", "h200-nvl"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("NVIDIA B200", "b200"),
    ("NVIDIA GB200", "gb200"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 3090", "rtx-3090"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
]

# Cards whose FP16/BF16 tensor peak is half the architecture's per-SM rate: GeForce with FP32 accumulate,
# and the L40 (hardware-reference.md section 2, Ada and GA10x rows).
HALF_RATE_TENSOR = {"rtx-4090", "rtx-3090", "l40"}


def _rate(cc: tuple[int, int], precision: str) -> int:
    rate = ARCH_RATES[cc][precision]
    assert rate is not None
    return rate


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key"), REFERENCE_NAMES)
def test_reference_nvml_name_resolves_to_its_entry(name, key):
    resolved = resolve(name)
    assert resolved.key == key
    assert resolved.spec is BY_KEY[key]
    assert not resolved.derived


@pytest.mark.parametrize(("name", "key"), REFERENCE_NAMES)
def test_reference_nvml_name_is_listed_in_its_entry(name, key):
    assert name in BY_KEY[key].nvml_names


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_every_catalog_name_and_key_resolves_to_its_entry(spec):
    for name in spec.nvml_names:
        assert resolve(name).key == spec.key
    assert resolve(spec.key).key == spec.key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("A100-SXM4-40GB", "a100-40gb"),  # old drivers drop the "NVIDIA " prefix
        ("A100-PCIE-40GB", "a100-40gb"),
        ("A100-SXM4-80GB", "a100-sxm-80gb"),
        ("NVIDIA A100-PCIE-80GB", "a100-pcie-80gb"),
        ("A100 80GB PCIe", "a100-pcie-80gb"),
        ("H100 80GB HBM3", "h100-sxm"),
        ("V100-SXM2-16GB", "v100-sxm2"),
        ("T4", "t4"),
        ("GeForce RTX 4090", "rtx-4090"),
        ("nvidia h100 80gb hbm3", "h100-sxm"),
        ("NVIDIA H100 80GB hbm3", "h100-sxm"),
        ("NVIDIA h100 pcie", "h100-pcie"),
        ("nvidia l40s", "l40s"),
        ("NVIDIA l40S", "l40s"),
        ("NVIDIA L40s", "l40s"),
        ("  NVIDIA   L40S  ", "l40s"),
        ("NVIDIA\tL4", "l4"),
        ("nvidia h200", "h200-sxm"),
        ("H200 141GB HBM3e", "h200-sxm"),
        ("nvidia H200 nvl", "h200-nvl"),
        ("NVIDIA GH200 120GB", "gh200"),
        ("NVIDIA GH200 144G HBM3e", "gh200"),
        ("nvidia rtx 6000 ada generation", "rtx-6000-ada"),
    ],
)
def test_name_variants_resolve(name, key):
    assert resolve(name).key == key


@pytest.mark.parametrize(
    ("name", "key", "bf16"),
    [
        # "l4" is a token, not a substring: L40 and L40S must not get L4's peak
        ("NVIDIA L4", "l4", 121),
        ("NVIDIA L40", "l40", 181),
        ("NVIDIA L40S", "l40s", 362),
        ("NVIDIA A10", "a10", 125),
        ("NVIDIA A10G", "a10g", 125),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb", 312),
        ("NVIDIA H100 80GB HBM3", "h100-sxm", 989.4),
        ("NVIDIA H100 PCIe", "h100-pcie", 756),
        # some clouds' name for the PCIe card: HBM2e, not the SXM's HBM3 (114 SMs, not 132)
        ("NVIDIA H100 80GB HBM2e", "h100-pcie", 756),
        ("NVIDIA H100 NVL", "h100-nvl", 835.5),
        ("NVIDIA H200", "h200-sxm", 989.5),
        ("NVIDIA H200 NVL", "h200-nvl", 840),
        ("NVIDIA B200", "b200", 2250),
        ("NVIDIA GB200", "gb200", 2500),
        ("NVIDIA GH200 480GB", "gh200", 989.4),
    ],
)
def test_confusable_names_get_their_own_peak(name, key, bf16):
    resolved = resolve(name)
    assert resolved.key == key
    assert resolved.peaks_tflops["bf16"] == pytest.approx(bf16)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA L4 24GB", "l4"),
        ("NVIDIA L40 48GB", "l40"),
        ("NVIDIA L40S 48GB", "l40s"),
        ("NVIDIA A10 24GB", "a10"),
        ("NVIDIA A10G 24GB", "a10g"),
        ("NVIDIA A100 40GB", "a100-40gb"),
        ("NVIDIA A100 SXM 80GB", "a100-sxm-80gb"),
        ("NVIDIA H100 SXM5 80GB", "h100-sxm"),
        ("NVIDIA H100 PCIe 80GB", "h100-pcie"),
        ("NVIDIA H100 HBM2e", "h100-pcie"),
        ("NVIDIA H100 NVL 94GB", "h100-nvl"),
        ("NVIDIA H200 SXM 141GB", "h200-sxm"),
        ("NVIDIA H200 NVL 141GB", "h200-nvl"),
        ("NVIDIA B200 180GB", "b200"),
        ("NVIDIA GB200 186GB", "gb200"),
        ("NVIDIA GH200 96GB", "gh200"),
    ],
)
def test_confusion_pairs_through_the_name_rules(name, key):
    # names no catalog entry lists exactly, so the most-specific-first token rules decide
    assert all(name.lower() != n.lower() for spec in SPECS for n in spec.nvml_names)
    assert resolve(name).key == key


@pytest.mark.parametrize(
    ("name", "pci_device_id", "key"),
    [
        ("NVIDIA H100 80GB HBM3", 0x2321, "h100-nvl"),
        ("NVIDIA H100 PCIe", 0x2321, "h100-nvl"),
        ("NVIDIA H200", 0x233B, "h200-nvl"),
        ("NVIDIA H200 NVL", 0x233B, "h200-nvl"),
        # 0x2335 is the H200 SXM in NVIDIA's driver README, not the NVL
        ("NVIDIA H200", 0x2335, "h200-sxm"),
        ("NVIDIA H200 NVL", 0x2335, "h200-sxm"),
        ("NVIDIA B200", 0x2941, "gb200"),
        ("NVIDIA GB200", 0x2901, "b200"),
        ("Graphics Device", 0x20B7, "a30"),
        ("NVIDIA Graphics Device", 0x2901, "b200"),
        # an id the catalog does not know falls back to the name
        ("NVIDIA L4", 0x27B8, "l4"),
        ("NVIDIA H100 80GB HBM3", 0x2330, "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", 0x2331, "h100-pcie"),
        ("NVIDIA H100 PCIe", 0x2330, "h100-sxm"),
    ],
)
def test_pci_device_id_wins_over_the_name(name, pci_device_id, key):
    assert resolve(name, pci_device_id).key == key


# --- unknown GPUs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H800",
        "NVIDIA H20",
        "NVIDIA L20",
        "NVIDIA A800-SXM4-80GB",
        "Tesla V100-PCIE-16GB",  # PCIe V100 clocks lower than the SXM2 entry
        "Quadro RTX 6000",  # Turing, not the Ada card
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        # variants of catalog cards with other SM counts must not borrow the base card's peak
        "NVIDIA GeForce RTX 3090 Ti",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "Graphics Device",
        "",
    ],
)
def test_unknown_gpu_raises_a_one_line_error_saying_how_to_derive(name):
    with pytest.raises(UnknownGpuError) as info:
        resolve(name)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message
    for argument in ("compute_capability", "sm_count", "max_sm_clock_mhz"):
        assert argument in message


@pytest.mark.parametrize(
    "partial",
    [
        {"sm_count": 132, "compute_capability": (9, 0)},
        {"sm_count": 132, "max_sm_clock_mhz": 1980},
        {"compute_capability": (9, 0), "max_sm_clock_mhz": 1980},
    ],
)
def test_unknown_gpu_with_partial_derivation_info_raises(partial):
    with pytest.raises(UnknownGpuError):
        resolve("NVIDIA H800", **partial)


def test_unknown_gpu_of_unknown_arch_raises_naming_the_compute_capability():
    with pytest.raises(UnknownGpuError, match=r"compute capability 12\.0") as info:
        resolve("NVIDIA GeForce RTX 5090", sm_count=170, compute_capability=(12, 0), max_sm_clock_mhz=2407)
    assert "\n" not in str(info.value)


def test_unknown_gpu_is_derived_from_sms_rate_and_clock():
    resolved = resolve("NVIDIA H800", sm_count=132, compute_capability=(9, 0), max_sm_clock_mhz=1830)
    assert resolved.derived
    assert resolved.key is None and resolved.spec is None
    assert resolved.sm_count == 132
    assert resolved.mem_bw_gbps is None
    assert resolved.mig_profile is None
    assert resolved.source.startswith("derived: SMs x per-SM rate x max SM clock")
    assert set(resolved.peaks_tflops) == set(PRECISIONS)
    assert resolved.peaks_tflops["bf16"] == pytest.approx(989.4, abs=0.05)
    assert resolved.peaks_tflops["fp32"] == pytest.approx(132 * 256 * 1.83e-3)
    assert resolved.whole_gpu_peaks_tflops == resolved.peaks_tflops


@pytest.mark.parametrize(
    ("cc", "arch"),
    [((9, 0), (9, 0)), ((9, 1), (9, 0)), ((10, 3), (10, 0)), ((8, 9), (8, 9)), ((8, 7), (8, 6)),
     ((8, 8), (8, 6)), ((8, 6), (8, 6)), ((8, 0), (8, 0)), ((7, 5), (7, 5))],
)
def test_derivation_falls_back_to_the_major_arch(cc, arch):
    resolved = resolve("Some Future GPU", sm_count=100, compute_capability=cc, max_sm_clock_mhz=1000)
    for precision in PRECISIONS:
        rate = ARCH_RATES[arch][precision]
        expected = None if rate is None else 100 * rate * 1e-3
        assert resolved.peaks_tflops[precision] == (pytest.approx(expected) if expected else None)


def test_known_gpu_with_its_own_sm_count_ignores_derivation_info():
    resolved = resolve("NVIDIA H100 80GB HBM3", sm_count=132, compute_capability=(9, 0),
                       max_sm_clock_mhz=1000)
    assert not resolved.derived
    assert resolved.sm_count == 132
    assert resolved.peaks_tflops["bf16"] == 989.4


def test_a_gpu_with_another_sm_count_than_its_entry_gets_derived_peaks():
    """The name matched the SXM entry, but 114 SMs say it is another card (an H100 PCIe under a cloud's
    name): its peaks are derived from what it is, its bandwidth unknown, the mismatch in the source."""
    resolved = resolve("NVIDIA H100 80GB HBM3", sm_count=114, compute_capability=(9, 0),
                       max_sm_clock_mhz=1755)
    assert resolved.derived and resolved.sm_count == 114 and resolved.mem_bw_gbps is None
    assert resolved.peaks_tflops["bf16"] == pytest.approx(114 * 4096 * 1755 / 1e6)
    assert resolved.source.startswith("'NVIDIA H100 80GB HBM3' matched H100 SXM, which has 132 SMs, but "
                                      "this GPU has 114: derived")
    # without what a derivation needs, the entry stands, with the warning
    kept = resolve("NVIDIA H100 80GB HBM3", sm_count=114)
    assert not kept.derived and kept.peaks_tflops["bf16"] == 989.4
    assert "WARNING: 'NVIDIA H100 80GB HBM3' matched H100 SXM, which has 132 SMs" in kept.source


# --- MIG -------------------------------------------------------------------------------------------


def test_h100_mig_1g_slice_scales_peaks_by_its_sms():
    resolved = resolve("NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    parent = BY_KEY["h100-sxm"]
    assert resolved.key == "h100-sxm"
    assert resolved.mig_profile == "1g.10gb"
    assert resolved.sm_count == 16
    assert not resolved.derived
    assert resolved.peaks_tflops["bf16"] == pytest.approx(989.4 * 16 / 132)
    for precision in PRECISIONS:
        whole = parent.peaks_tflops[precision]
        assert resolved.whole_gpu_peaks_tflops[precision] == whole
        expected = None if whole is None else pytest.approx(whole * 16 / 132)
        assert resolved.peaks_tflops[precision] == expected
    assert resolved.mem_bw_gbps == pytest.approx(3350 * 10 / 80)
    assert "derived" in resolved.source and "bandwidth" in resolved.source


MIG_CASES = [(spec, profile, sms) for spec in SPECS for profile, sms in spec.mig_profiles.items()]


@pytest.mark.parametrize(
    ("spec", "profile", "sms"), MIG_CASES, ids=[f"{s.key}-{p}" for s, p, _ in MIG_CASES]
)
def test_every_catalog_mig_profile_resolves_by_name(spec, profile, sms):
    resolved = resolve(f"{spec.nvml_names[0]} MIG {profile}", spec.pci_device_ids[0] if spec.pci_device_ids
                       else None)
    assert resolved.key == spec.key
    assert resolved.sm_count == sms
    assert resolved.peaks_tflops["bf16"] == pytest.approx(spec.peaks_tflops["bf16"] * sms / spec.sm_count)
    assert resolved.whole_gpu_peaks_tflops == spec.peaks_tflops


@pytest.mark.parametrize(
    ("key", "profiles"),
    [
        ("a100-40gb",
         {"1g.5gb": 14, "1g.10gb": 14, "2g.10gb": 28, "3g.20gb": 42, "4g.20gb": 56, "7g.40gb": 98}),
        ("a100-sxm-80gb",
         {"1g.10gb": 14, "1g.20gb": 14, "2g.20gb": 28, "3g.40gb": 42, "4g.40gb": 56, "7g.80gb": 98}),
        ("a100-pcie-80gb",
         {"1g.10gb": 14, "1g.20gb": 14, "2g.20gb": 28, "3g.40gb": 42, "4g.40gb": 56, "7g.80gb": 98}),
        ("h100-sxm",
         {"1g.10gb": 16, "1g.20gb": 26, "2g.20gb": 32, "3g.40gb": 60, "4g.40gb": 64, "7g.80gb": 132}),
        ("h100-nvl", {"1g.12gb": 16, "1g.24gb": 26, "2g.24gb": 32, "3g.47gb": 60}),
        ("h200-sxm",
         {"1g.18gb": 16, "1g.35gb": 26, "2g.35gb": 32, "3g.71gb": 60, "4g.71gb": 64, "7g.141gb": 132}),
        ("b200", {"1g.23gb": 18, "1g.45gb": 30, "2g.45gb": 36}),
        # MIG-capable, but no verified slice table: runtime SM count needed
        ("h100-pcie", {}),
        ("h200-nvl", {}),
        ("a30", {}),
    ],
)
def test_mig_tables_match_the_reference(key, profiles):
    assert BY_KEY[key].mig_profiles == profiles


def test_mig_media_extension_suffix_is_kept_but_ignored_for_lookup():
    resolved = resolve("NVIDIA H100 80GB HBM3 MIG 1g.10gb+me")
    assert resolved.mig_profile == "1g.10gb+me"
    assert resolved.sm_count == 16
    assert resolved.mem_bw_gbps == pytest.approx(3350 / 8)


def test_mig_runtime_sm_count_wins_over_the_table():
    resolved = resolve("NVIDIA H100 80GB HBM3 MIG 1g.10gb", sm_count=14)
    assert resolved.sm_count == 14
    assert resolved.peaks_tflops["bf16"] == pytest.approx(989.4 * 14 / 132)
    assert resolved.whole_gpu_peaks_tflops["bf16"] == 989.4
    assert "runtime" in resolved.source


@pytest.mark.parametrize(
    "name",
    ["NVIDIA H100 80GB HBM3 MIG 5g.50gb", "NVIDIA H100 PCIe MIG 1g.10gb", "NVIDIA A30 MIG 1g.6gb",
     "NVIDIA H200 NVL MIG 1g.18gb"],
)
def test_mig_profile_without_sm_count_raises_naming_the_profile(name):
    profile = name.split(" MIG ")[1]
    with pytest.raises(UnknownGpuError, match=profile.replace(".", r"\.")) as info:
        resolve(name)
    assert "sm_count" in str(info.value)
    assert "\n" not in str(info.value)


def test_mig_slice_of_gpu_without_a_table_scales_with_runtime_sms():
    resolved = resolve("NVIDIA H100 PCIe MIG 1g.10gb", sm_count=14)
    assert resolved.key == "h100-pcie"
    assert resolved.peaks_tflops["bf16"] == pytest.approx(756 * 14 / 114)
    assert resolved.mem_bw_gbps == pytest.approx(2000 * 10 / 80)


@pytest.mark.parametrize(
    ("name", "pci_device_id", "key", "sms"),
    [
        ("A100-SXM4-40GB MIG 3g.20gb", None, "a100-40gb", 42),
        ("nvidia a100-sxm4-80gb mig 7g.80gb", None, "a100-sxm-80gb", 98),
        ("NVIDIA H100 NVL MIG 1g.12gb", 0x2321, "h100-nvl", 16),
        ("NVIDIA H200 MIG 3g.71gb", 0x2335, "h200-sxm", 60),
        ("NVIDIA H200 141GB HBM3e MIG 7g.141gb", None, "h200-sxm", 132),
        ("NVIDIA B200 MIG 1g.23gb", 0x2901, "b200", 18),
    ],
)
def test_mig_names_resolve_their_parent(name, pci_device_id, key, sms):
    resolved = resolve(name, pci_device_id)
    assert (resolved.key, resolved.sm_count) == (key, sms)


def test_mig_slice_of_unknown_gpu_is_derived_from_its_own_sms():
    resolved = resolve("NVIDIA H800 MIG 1g.10gb", sm_count=16, compute_capability=(9, 0),
                       max_sm_clock_mhz=1830)
    assert resolved.derived
    assert resolved.mig_profile == "1g.10gb"
    assert resolved.peaks_tflops["bf16"] == pytest.approx(16 * 4096 * 1.83e-3)
    assert all(v is None for v in resolved.whole_gpu_peaks_tflops.values())


def test_whole_gpu_is_not_mig():
    resolved = resolve("NVIDIA H100 80GB HBM3")
    assert resolved.mig_profile is None
    assert resolved.whole_gpu_peaks_tflops == resolved.peaks_tflops
    assert resolved.mem_bw_gbps == 3350


# --- arithmetic ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "sms", "mhz", "precision", "tflops", "tolerance"),
    [
        ((9, 0), 132, 1830, "bf16", 989.4, 0.05),  # H100 SXM, datasheet tensor clock
        ((9, 0), 132, 1980, "fp32", 66.9, 0.05),  # H100 SXM FP32 at max boost
        ((9, 0), 114, 1620, "bf16", 756.4, 0.05),  # H100 PCIe
        ((8, 0), 108, 1410, "bf16", 311.87, 0.005),  # A100
        ((7, 0), 80, 1530, "fp16", 125.3, 0.05),  # V100
        ((8, 9), 142, 2520, "bf16", 366.4, 0.05),  # L40S at its boost clock
    ],
)
def test_clock_adjusted_peak(cc, sms, mhz, precision, tflops, tolerance):
    assert clock_adjusted_peak_tflops(cc, sms, mhz, precision) == pytest.approx(tflops, abs=tolerance)


@pytest.mark.parametrize(
    ("cc", "precision"),
    [((7, 0), "bf16"), ((7, 5), "tf32"), ((8, 0), "fp8"), ((12, 0), "bf16"), ((6, 0), "fp32")],
)
def test_clock_adjusted_peak_is_none_without_a_rate(cc, precision):
    assert clock_adjusted_peak_tflops(cc, 100, 1500, precision) is None


def test_clock_adjusted_peak_rejects_unknown_precision():
    with pytest.raises(ValueError, match="fp4"):
        clock_adjusted_peak_tflops((9, 0), 132, 1830, "fp4")


@pytest.mark.parametrize("cc", list(ARCH_RATES), ids=str)
def test_arch_rates_cover_every_precision(cc):
    assert set(ARCH_RATES[cc]) == set(PRECISIONS)


# --- the data --------------------------------------------------------------------------------------


def test_catalog_is_in_reference_table_order():
    assert [spec.key for spec in SPECS] == [
        "v100-sxm2", "t4", "a10", "a10g", "a100-40gb", "a100-sxm-80gb", "a100-pcie-80gb", "a30", "l4", "l40",
        "l40s", "h100-sxm", "h100-pcie", "h100-nvl", "h200-sxm", "h200-nvl", "gh200", "b200", "gb200",
        "rtx-4090", "rtx-3090", "rtx-6000-ada",
    ]


def test_catalog_names_and_pci_ids_are_unique():
    names = [" ".join(n.lower().split()) for spec in SPECS for n in spec.nvml_names]
    ids = [pci for spec in SPECS for pci in spec.pci_device_ids]
    assert len(names) == len(set(names))
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_entry_is_complete(spec):
    assert tuple(spec.peaks_tflops) == PRECISIONS
    assert spec.source.strip()
    assert spec.nvml_names
    assert spec.sm_count > 0 and spec.memory_gb > 0
    assert all(v is None or v > 0 for v in spec.peaks_tflops.values())
    assert spec.compute_capability in ARCH_RATES
    assert all(0 < sms <= spec.sm_count for sms in spec.mig_profiles.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_entry_has_math_only_where_its_arch_does(spec):
    rates = ARCH_RATES[spec.compute_capability]
    for precision in PRECISIONS:
        if rates[precision] is None:
            assert spec.peaks_tflops[precision] is None, precision


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_bf16_and_fp16_tensor_peaks_agree(spec):
    if spec.key in ("v100-sxm2", "t4"):  # FP16-only tensor cores
        assert spec.peaks_tflops["bf16"] is None
        assert spec.peaks_tflops["fp16"] is not None
    else:
        assert spec.peaks_tflops["bf16"] == spec.peaks_tflops["fp16"]


TENSOR_CLOCKED = [spec for spec in SPECS if spec.tensor_mhz is not None]


@pytest.mark.parametrize("spec", TENSOR_CLOCKED, ids=lambda s: s.key)
def test_tensor_peak_matches_sms_rate_and_tensor_clock(spec):
    precision = "bf16" if spec.peaks_tflops["bf16"] is not None else "fp16"
    rate = _rate(spec.compute_capability, precision)
    if spec.key in HALF_RATE_TENSOR:
        rate //= 2
    expected = spec.sm_count * rate * spec.tensor_mhz / 1e6
    assert spec.peaks_tflops[precision] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.boost_mhz is not None], ids=lambda s: s.key)
def test_fp32_peak_matches_sms_rate_and_boost_clock(spec):
    expected = spec.sm_count * _rate(spec.compute_capability, "fp32") * spec.boost_mhz / 1e6
    assert spec.peaks_tflops["fp32"] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_no_sparse_tensor_peak_is_stored(spec):
    # A 2:4-sparse figure is twice the dense one: it would need a tensor clock above 2.1 GHz on the
    # Hopper and Blackwell parts whose datasheets print sparse numbers (and above 1.3x boost elsewhere).
    precision = "bf16" if spec.peaks_tflops["bf16"] is not None else "fp16"
    max_mhz = 2100 if spec.tensor_mhz is None else 1.3 * spec.tensor_mhz
    ceiling = spec.sm_count * _rate(spec.compute_capability, precision) * max_mhz / 1e6
    assert spec.peaks_tflops[precision] < ceiling


@pytest.mark.parametrize(
    ("key", "precision", "dense", "sparse"),
    [
        ("h100-sxm", "bf16", 989.4, 1979),
        ("h100-sxm", "fp8", 1979, 3958),
        ("h100-sxm", "tf32", 494.7, 989.4),
        ("h100-pcie", "bf16", 756, 1513),
        ("h200-sxm", "bf16", 989.5, 1979),
        ("l4", "bf16", 121, 242),
        ("b200", "bf16", 2250, 4500),
    ],
)
def test_dense_not_sparse_figures(key, precision, dense, sparse):
    peak = BY_KEY[key].peaks_tflops[precision]
    assert peak == pytest.approx(dense)
    assert peak != pytest.approx(sparse)


@pytest.mark.parametrize(
    ("key", "provisional"),
    [("b200", True), ("gb200", True), ("a30", True),
     ("h100-sxm", False), ("a100-40gb", False), ("l4", False)],
)
def test_provisional_flags(key, provisional):
    assert BY_KEY[key].provisional is provisional


# --- output ----------------------------------------------------------------------------------------

JSON_KEYS = {
    "name", "key", "sm_count", "mem_bw_gbps", "peaks_tflops", "whole_gpu_peaks_tflops", "derived",
    "mig_profile", "source", "compute_capability", "provisional",
}


def test_spec_to_json_for_a_catalog_gpu():
    data = spec_to_json(resolve("NVIDIA H100 80GB HBM3"))
    assert set(data) >= JSON_KEYS
    assert set(data["peaks_tflops"]) == set(PRECISIONS)
    assert data["key"] == "h100-sxm"
    assert data["compute_capability"] == "9.0"
    assert data["derived"] is False
    assert data["mig_profile"] is None
    assert data["provisional"] is False
    assert data["peaks_tflops"]["bf16"] == 989.4


def test_spec_to_json_for_a_mig_slice_and_a_derived_gpu():
    mig = spec_to_json(resolve("NVIDIA B200 MIG 1g.23gb"))
    assert mig["mig_profile"] == "1g.23gb"
    assert mig["sm_count"] == 18
    assert mig["whole_gpu_peaks_tflops"]["bf16"] == 2250
    assert mig["provisional"] is True
    derived = spec_to_json(resolve("X", sm_count=10, compute_capability=(8, 0), max_sm_clock_mhz=1000))
    assert set(derived) >= JSON_KEYS
    assert derived["derived"] is True
    assert derived["key"] is None
    assert derived["compute_capability"] == "8.0"
    assert set(derived["peaks_tflops"]) == set(PRECISIONS)


def test_specs_table_has_one_full_row_per_entry():
    headers, rows = specs_table()
    assert [spec.key for spec in SPECS] == [row[headers.index("key")] for row in rows]
    assert all(len(row) == len(headers) for row in rows)
    for precision in PRECISIONS:
        assert precision in headers
    h100 = rows[[spec.key for spec in SPECS].index("h100-sxm")]
    assert h100[headers.index("bf16")] == 989.4
    assert h100[headers.index("SMs")] == 132
    assert h100[headers.index("source")] == "H100DS, LT, TT, DQ"
