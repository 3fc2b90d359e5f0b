"""MIG: the fragmentation table against hardware-reference.md section 3, `mfugap mig`, and the one-process-
per-instance run against the strict pynvml fake (no GPU needed)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from mfugap import catalog, cli, mig
from mfugap.device import MigInstance
from mfugap.plugin import SUITES_DIR
from tests import fake_cupy
from tests.fake_nvml import GIB, FakeGpu, FakeMig, FakeNvml

H100 = "NVIDIA H100 80GB HBM3"
MIG_1G = FakeMig(uuid="MIG-aaaaaaaa-1111-5e1f-9b4a-2f7c1e0a0001", name=f"{H100} MIG 1g.10gb", sm_count=16,
                 gpu_instance_id=9, compute_instance_id=0, memory_total=10 * GIB)
MIG_3G = FakeMig(uuid="MIG-cccccccc-3333-5e1f-9b4a-2f7c1e0a0003", name=f"{H100} MIG 3g.40gb", sm_count=60,
                 gpu_instance_id=2, compute_instance_id=0, memory_total=40 * GIB)


@pytest.fixture(autouse=True)
def no_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _layouts(name: str) -> dict[str, mig.Layout]:
    return {lay.layout: lay for lay in mig.fragmentation(mig.lookup(name)).layouts}


# ---- the fragmentation table ----

# hardware-reference.md section 3: "7 x 1g = 112 used / 20 idle (15.2%); 3 x 2g + 1g = 112/20;
# 2 x 3g = 120/12; 4g + 3g = 124/8; 7g = 132/0. A100: 7 x 1g = 98/10; 7g = 98/10 (9.3%)."
@pytest.mark.parametrize(("name", "layout", "used", "idle", "idle_pct"), [
    (H100, "7x1g", 112, 20, 15.2),
    (H100, "3x2g+1g", 112, 20, 15.2),
    (H100, "2x3g", 120, 12, 9.1),
    (H100, "4g+3g", 124, 8, 6.1),
    (H100, "7g", 132, 0, 0.0),
    ("NVIDIA H200", "7x1g", 112, 20, 15.2),
    ("NVIDIA H200", "4g+3g", 124, 8, 6.1),
    ("NVIDIA A100-SXM4-80GB", "7x1g", 98, 10, 9.3),
    ("NVIDIA A100-SXM4-80GB", "7g", 98, 10, 9.3),
    ("NVIDIA A100-SXM4-40GB", "7x1g", 98, 10, 9.3),
    ("NVIDIA A100-SXM4-40GB", "7g", 98, 10, 9.3),
])
def test_fragmentation_matches_the_reference_figures(name, layout, used, idle, idle_pct):
    row = _layouts(name)[layout]
    assert (row.sm_used, row.sm_idle) == (used, idle)
    assert row.max_whole_gpu_mfu_pct == pytest.approx(100 - idle_pct, abs=0.05)


@pytest.mark.parametrize("key", ["h100-sxm", "h200-sxm", "a100-40gb", "a100-sxm-80gb", "a100-pcie-80gb"])
def test_full_layouts_are_built_from_the_catalog_table(key):
    spec = mig.lookup(key)
    table = mig.fragmentation(spec)
    assert [lay.layout for lay in table.layouts] == ["7x1g", "3x2g+1g", "2x3g", "4g+3g", "7g"]
    assert table.sm_count == spec.sm_count
    for lay in table.layouts:
        assert lay.sm_used == sum(spec.mig_profiles[p] for p in lay.slices)
        assert lay.sm_idle == spec.sm_count - lay.sm_used
        assert lay.max_whole_gpu_mfu_pct == round(100 * lay.sm_used / spec.sm_count, 1)
    # a full layout takes each size's smallest profile: the 16-SM 1g.10gb, never the 26-SM 1g.20gb
    smallest_1g = min((p for p in spec.mig_profiles if p.startswith("1g.")), key=mig.profile_size)
    assert set(table.layouts[0].slices) == {smallest_1g}


def test_layouts_needing_unverified_profiles_are_left_out():
    assert list(_layouts("NVIDIA H100 NVL")) == ["7x1g", "3x2g+1g", "2x3g"]  # no verified 4g or 7g
    assert list(_layouts("NVIDIA B200")) == ["7x1g", "3x2g+1g"]


def test_profiles_sort_by_compute_slices_then_memory():
    names = [name for name, _ in mig.profiles(mig.lookup("a100-40gb"))]
    assert names == ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    assert mig.profile_size("3g.47gb") == (3, 47.0)
    with pytest.raises(ValueError, match="not a MIG profile"):
        mig.profile_size("MIG 1g")


def test_grouped_counts_runs():
    assert mig.grouped(["2g", "2g", "2g", "1g"]) == "3x2g+1g"
    assert mig.grouped(["4g", "3g"]) == "4g+3g"
    assert mig.grouped(["7g"]) == "7g"


def test_lookup_takes_keys_nvml_names_and_mig_names():
    h100 = mig.lookup("h100-sxm")
    assert mig.lookup(H100) is h100 and mig.lookup(f"{H100} MIG 1g.10gb") is h100


@pytest.mark.parametrize("name", ["NVIDIA L4", "NVIDIA A30", "Voodoo 5 6000"])
def test_no_mig_table_is_one_clear_line(name):
    with pytest.raises(mig.MigTableError) as info:
        mig.fragmentation(mig.lookup(name))
    assert "\n" not in str(info.value)
    assert "MIG table" in str(info.value) or "not in the mfugap catalog" in str(info.value)


def test_json_shape():
    out = mig.fragmentation(mig.lookup(H100)).to_json()
    assert (out["name"], out["key"], out["sm_count"]) == ("H100 SXM", "h100-sxm", 132)
    first = out["layouts"][0]
    assert set(first) == {"layout", "slices", "sm_used", "sm_idle", "max_whole_gpu_mfu_pct"}
    assert first == {"layout": "7x1g", "slices": ["1g.10gb"] * 7, "sm_used": 112, "sm_idle": 20,
                     "max_whole_gpu_mfu_pct": 84.8}
    assert json.loads(json.dumps(out)) == out


# ---- mfugap mig ----

def test_cli_mig_prints_the_table(capsys):
    assert cli.main(["mig", H100]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "H100 SXM" in out and "132 SMs" in out
    line = next(line for line in out.splitlines() if line.startswith("7x1g "))
    assert line.split()[-3:] == ["112", "20", "84.8"]


def test_cli_mig_json(capsys):
    assert cli.main(["mig", "a100-sxm-80gb", "--json"]) == cli.EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["key"] == "a100-sxm-80gb"
    assert {lay["layout"]: lay["sm_idle"] for lay in out["layouts"]}["7g"] == 10


@pytest.mark.parametrize(("name", "says"), [("Voodoo 5 6000", "not in the mfugap catalog"),
                                            ("NVIDIA L4", "no MIG table")])
def test_cli_mig_unknown_or_without_mig_is_one_line_and_exit_2(capsys, name, says):
    assert cli.main(["mig", name]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and says in captured.err


# ---- one process per MIG instance ----

def _mig_nvml(mig_mode=(1, 1)) -> FakeNvml:
    return FakeNvml(FakeGpu(mig_mode=mig_mode, mig_slots=[MIG_1G, None, MIG_3G, None]))


def test_instances_to_run_skips_empty_slots():
    found = mig.instances_to_run(nvml=_mig_nvml())
    assert [(m.index, m.uuid, m.sm_count) for m in found] == [(0, MIG_1G.uuid, 16), (2, MIG_3G.uuid, 60)]


def test_instances_to_run_never_opens_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # any CuPy import would fail
    assert len(mig.instances_to_run(nvml=_mig_nvml())) == 2


@pytest.mark.parametrize("gpu", [FakeGpu(), FakeGpu(mig_mode=(0, 0)), FakeGpu(mig_mode=(0, 1))],
                         ids=["no-mig", "mig-disabled", "mig-pending"])
def test_no_instances_without_mig_enabled(gpu):
    assert mig.instances_to_run(nvml=FakeNvml(gpu)) == []


def test_no_instances_when_already_inside_one(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_3G.uuid)
    assert mig.instances_to_run(nvml=_mig_nvml()) == []


def test_no_instances_when_nvml_fails():
    nvml = _mig_nvml()
    nvml.errors["nvmlInit"] = 9  # NVML_ERROR_DRIVER_NOT_LOADED
    assert mig.instances_to_run(nvml=nvml) == []


def test_child_runs_pytest_confined_to_the_instance():
    instance = mig.instances_to_run(nvml=_mig_nvml())[1]
    kid = mig.child(instance, ["suites", "--benchmark", "--quick"], {"PATH": "/bin", "HOME": "/h"}, "/py")
    assert kid.argv == ("/py", "-m", "pytest", "suites", "--benchmark", "--quick")
    assert kid.env == {"PATH": "/bin", "HOME": "/h", "CUDA_VISIBLE_DEVICES": MIG_3G.uuid}
    assert "3g.40gb" in kid.label and "60 SMs" in kid.label


def test_children_replace_an_existing_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    kids = mig.children(["--benchmark"], nvml=_mig_nvml())
    assert [k.env["CUDA_VISIBLE_DEVICES"] for k in kids] == [MIG_1G.uuid, MIG_3G.uuid]
    assert all(k.argv[0] == sys.executable for k in kids)


def _instances() -> list[MigInstance]:
    return [MigInstance(index=i, uuid=m.uuid, name=m.name, sm_count=m.sm_count, gpu_instance_id=None,
                        compute_instance_id=None) for i, m in enumerate((MIG_1G, MIG_3G))]


def _fake_subprocess(codes: list[int], seen: list):
    class Popen:
        def __init__(self, argv, env):
            seen.append((argv, env["CUDA_VISIBLE_DEVICES"]))
            self.code = codes[len(seen) - 1]

        def wait(self):
            return self.code

    return SimpleNamespace(Popen=Popen)


def test_run_children_runs_each_in_order_and_collects_codes(monkeypatch, capsys):
    seen: list = []
    monkeypatch.setattr(mig, "subprocess", _fake_subprocess([0, 1], seen))
    kids = [mig.child(m, ["x"], {}, "py") for m in _instances()]
    assert mig.run_children(kids) == [0, 1]
    assert [uuid for _, uuid in seen] == [MIG_1G.uuid, MIG_3G.uuid]
    err = capsys.readouterr().err
    assert "MIG instance 1/2" in err and "MIG instance 2/2" in err


def test_ctrl_c_lets_the_running_child_save_and_starts_no_other(tmp_path):
    """The parent gets Ctrl-C while a child still has rows to save: it waits for that child (which
    would be killed by subprocess.run within 0.25 s), then stops before the next instance."""
    saved = tmp_path / "saved"
    # The child interrupts its parent, then takes a while to save, like pytest writing a results file.
    slow_save = ("import os, pathlib, signal, sys, time; os.kill(os.getppid(), signal.SIGINT); "
                 "time.sleep(1.0); pathlib.Path(sys.argv[1]).write_text('rows'); sys.exit(2)")
    kids = [mig.Child("slow", (sys.executable, "-c", slow_save, str(saved)), dict(os.environ)),
            mig.Child("next", (sys.executable, "-c", "open('started', 'w')"), dict(os.environ))]
    with pytest.raises(KeyboardInterrupt):
        mig.run_children(kids)
    assert saved.read_text() == "rows"
    assert not (tmp_path / "started").exists() and not os.path.exists("started")


def test_waiting_resumes_after_each_interrupt():
    calls = iter([KeyboardInterrupt, KeyboardInterrupt, 2])

    def wait():
        outcome = next(calls)
        if outcome is KeyboardInterrupt:
            raise outcome
        return outcome

    assert mig.wait_through_interrupts(SimpleNamespace(wait=wait)) == (2, True)
    assert mig.wait_through_interrupts(SimpleNamespace(wait=lambda: 0)) == (0, False)


@pytest.mark.parametrize(("codes", "expected"), [([0, 0], cli.EXIT_OK), ([0, 1], cli.EXIT_FAILED),
                                                 ([5, 0], cli.EXIT_USAGE), ([1, 2], cli.EXIT_INTERRUPTED)])
def test_cli_run_with_mig_runs_one_child_per_instance(monkeypatch, tmp_path, codes, expected):
    import pytest as pytest_module

    seen: list = []
    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr(mig, "instances_to_run", lambda *a, **k: _instances())
    monkeypatch.setattr(mig, "subprocess", _fake_subprocess(codes, seen))
    monkeypatch.setattr(pytest_module, "main", lambda *a, **k: pytest.fail("ran in the parent process"))
    code = cli.main(["run", "--quick", "--suite", "mig_slices", "--results-dir", str(tmp_path)])
    assert code == expected
    assert [uuid for _, uuid in seen] == [MIG_1G.uuid, MIG_3G.uuid]
    argv = seen[0][0]
    assert argv[:3] == (sys.executable, "-m", "pytest")
    assert str(SUITES_DIR / "test_mig_slices.py") in argv
    assert {"--benchmark", "--mfugap-quick", "--mfugap-results-dir", str(tmp_path)} <= set(argv)


def test_a_child_command_is_a_working_pytest_invocation(tmp_path):
    """The child's argv, run for real on this machine (no usable GPU there): plugin options accepted,
    the suite collected and skipped for want of a GPU, exit 0."""
    instance = _instances()[0]
    args = [str(SUITES_DIR / "test_mig_slices.py"), "--benchmark", "--mfugap-quick", "-rs",
            "--mfugap-results-dir", str(tmp_path / "results")]
    kid = mig.child(instance, args, os.environ, sys.executable)
    proc = subprocess.run(kid.argv, env=kid.env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU" in proc.stdout and " passed" not in proc.stdout


# ---- the suite's pieces that need no GPU ----

def test_suite_summary_is_the_cards_fragmentation_table():
    from mfugap.suites.test_mig_slices import summarize

    rows = [{"params": {"n": 1, "slice": "emulated 1g.10gb: 16 SMs", "card": "h100-sxm"}}] * 2
    summary = summarize(rows)
    assert list(summary) == ["7x1g", "3x2g+1g", "2x3g", "4g+3g", "7g"]
    assert summary["7x1g"] == {"sm_used": 112, "sm_idle": 20, "max_whole_gpu_mfu_pct": 84.8}
    assert summarize([]) == {}
    assert summarize([{"params": {"card": None}}]) == {}


def test_suite_covers_every_profile_of_the_largest_mig_table():
    from mfugap.suites.test_mig_slices import MAX_PROFILES

    assert MAX_PROFILES == max(len(spec.mig_profiles) for spec in catalog.catalog()) == 6


# ---- CuPy on a green-context stream (the GPU answers; here a fake CuPy) ----

def test_cupy_that_works_on_the_slice_stream_is_no_refusal(monkeypatch):
    from mfugap.suites.test_mig_slices import cupy_refusal
    from tests.fake_events import FakeStream

    fake_cupy.install_for_streams(monkeypatch)
    stream = FakeStream()
    assert cupy_refusal(stream) is None and stream.entered == 1


def test_a_refused_event_is_the_skip_reason(monkeypatch):
    from mfugap.suites.test_mig_slices import cupy_refusal
    from tests.fake_events import FakeStream

    def refuse(stream):
        raise RuntimeError("cudaErrorInvalidResourceHandle: invalid resource handle\ndetail")

    fake_cupy.install_for_streams(monkeypatch, record=refuse)
    refusal = cupy_refusal(FakeStream())
    assert refusal == "RuntimeError: cudaErrorInvalidResourceHandle: invalid resource handle"


def test_the_slice_stream_is_wrapped_through_the_stream_protocol_where_cupy_can(monkeypatch):
    from mfugap.suites.test_mig_slices import cupy_stream

    fake = fake_cupy.install_for_streams(monkeypatch)

    class CUstream:
        def __cuda_stream__(self):
            return (0, 0x5EA)

        def __int__(self):
            return 0x5EA

    assert cupy_stream(CUstream()).ptr == 0x5EA  # a CuPy without Stream.from_external
    fake.cuda.Stream = SimpleNamespace(from_external=lambda obj: ("protocol", obj.__cuda_stream__()[1]))
    assert cupy_stream(CUstream()) == ("protocol", 0x5EA)
