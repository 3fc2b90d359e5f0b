"""Each suite's summary reads the issues' GPU targets off its own rows: met, missed, or not measured."""
from mfugap.kernels import cublas_gemm, mma_gemm, peak, stream
from mfugap.suites import test_compute_bound, test_foundation, test_gemm_ladder, test_memory_bound


def row(workload: str, label: str, precision: str = "fp32", **fields) -> dict:
    params = {k: fields.pop(k) for k in ("m",) if k in fields}
    return {"workload": workload, "label": label, "precision": precision, "params": params,
            "tflops": None, "gbps": None, "mbu_pct": None, "mfu_pct": None, "mfu_clock_pct": None,
            "sampler_overhead_pct": None, **fields}


def test_memory_bound_triad_against_the_datasheet_and_memcpy():
    rows = [row("stream_triad", "stream_triad n=1", gbps=2950.0, mbu_pct=88.1),
            row(stream.DeviceCopy.NAME, "memcpy_d2d n=1", gbps=3000.0)]
    targets = test_memory_bound.summarize(rows)["targets"]
    assert targets == {"triad MBU %": "88.1 (missed: >= 90)", "triad % of memcpy": "98.3 (met: >= 97)"}
    assert test_memory_bound.summarize(rows[1:])["targets"]["triad % of memcpy"] == "not measured"


def test_memory_bound_reads_only_stream_kernels_against_memcpy():
    """GEMV and the unfused chain move more than their minimum bytes: a % of memcpy would misread them."""
    rows = [row("stream_copy", "copy", gbps=2970.0), row(stream.DeviceCopy.NAME, "memcpy", gbps=3000.0),
            row("gemv_bf16", "gemv", gbps=2700.0), row("elementwise_unfused", "chain x8", gbps=375.0)]
    assert test_memory_bound.summarize(rows)["% of memcpy GB/s"] == {"copy": 99.0}


def test_foundation_gemm_at_8192_only_and_the_worst_sampler_overhead():
    rows = [row("stream_triad", "t", mbu_pct=91.0, sampler_overhead_pct=0.2),
            row(cublas_gemm.CublasGemm.name, "g4", "bf16", m=4096, mfu_pct=60.0, sampler_overhead_pct=1.4),
            row(cublas_gemm.CublasGemm.name, "g8", "bf16", m=8192, mfu_pct=79.5)]
    targets = test_foundation.summarize(rows)["targets"]
    assert targets["triad MBU %"] == "91 (met: >= 90)"
    assert targets["cuBLAS bf16 8192^3 MFU %"] == "79.5 (met: >= 75)"
    assert targets["sampler overhead % (worst of this suite's rows)"] == "1.4 (missed: <= 1)"
    assert test_foundation.summarize(rows[:2])["targets"]["cuBLAS bf16 8192^3 MFU %"] == "not measured"


def test_compute_bound_takes_the_better_mma_tiling_at_8192():
    cublas = cublas_gemm.CublasGemm.name
    rows = [row(peak.FMA_FORMATS["fp32"].kernel, "fma", mfu_clock_pct=96.2),
            row(cublas, "cublas bf16 8192", "bf16", m=8192, tflops=700.0),
            row(mma_gemm.MmaGemm.name, "mma 64x32", "bf16", m=8192, tflops=280.0),
            row(mma_gemm.MmaGemm.name, "mma 64x64", "bf16", m=8192, tflops=385.0)]
    targets = test_compute_bound.summarize(rows)["targets"]
    assert targets == {"fp32 FMA % of clock-adjusted peak": "96.2 (met: >= 95)",
                       "mma.sync bf16 8192^3 % of cuBLAS": "55 (met: >= 50)"}


def test_gemm_ladder_target_counts_register_blocked_rungs_at_4096_only():
    cublas = cublas_gemm.CublasGemm.name
    rows = [row(cublas, "cublas 4096", m=4096, tflops=50.0), row(cublas, "cublas 8192", m=8192, tflops=50.0),
            row("gemm_smem_tiled", "rung 2", m=4096, tflops=45.0),  # not register-blocked: not counted
            row("gemm_vectorized", "rung 4 at 4096", m=4096, tflops=27.5),
            row("gemm_warptiled", "rung 5 at 8192", m=8192, tflops=40.0)]  # other size: not counted
    targets = test_gemm_ladder.summarize(rows)["targets"]
    assert targets == {"best register-blocked rung 4096^3 % of cuBLAS": "55 (missed: >= 60)"}


def test_stalls_summary_reads_the_loader_sweep_against_its_duty():
    from mfugap.kernels import stalls
    from mfugap.suites import test_pipeline_stalls

    def loader(duty, mfu, util):
        return {"workload": stalls.LoaderStarved.name, "params": {"duty_pct": duty}, "mfu_pct": mfu,
                "gpu_util_pct": util}

    rows = [loader(100, 60.0, 100.0), loader(25, 16.5, 27.0), loader(50, None, 55.0),
            {"workload": stalls.SyncStall.name, "params": {"host_ms": 1.0}, "mfu_pct": 30.0}]
    summary = test_pipeline_stalls.summarize(rows)
    assert list(summary) == ["duty 100%", "duty 50%", "duty 25%"]
    assert summary["duty 25%"] == {"MFU / MFU at 100%": 0.275, "expected": 0.25, "GPU-Util %": 27.0}
    assert summary["duty 50%"]["MFU / MFU at 100%"] is None
    assert test_pipeline_stalls.summarize(rows[1:]) == {}  # no 100% row: nothing to read against


def test_calibration_summary_sets_measured_sm_util_beside_the_grid():
    from mfugap.kernels import spin
    from mfugap.suites import test_utilization_calibration

    rows = [{"workload": spin.Spin.name, "label": "spin blocks=26", "gpu_util_pct": 100.0,
             "sm_util_pct": 19.4, "params": {"blocks": 26, "expected_sm_util_pct": 19.7}},
            {"workload": spin.Spin.name, "label": "spin (foundation)", "gpu_util_pct": 99.0,
             "sm_util_pct": 0.8, "params": {"blocks": 1}}]
    assert test_utilization_calibration.summarize(rows) == {
        "spin blocks=26": {"GPU-Util %": 100.0, "SM util %": 19.4, "expected SM util %": 19.7}}
