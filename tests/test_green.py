"""Green contexts: the split arithmetic, and the driver adapter and the suite's slices against a fake
cuda.bindings.driver module (no GPU needed)."""
import enum
import inspect
import sys
from types import SimpleNamespace

import pytest

from mfugap import catalog, green
from mfugap.device import discover
from mfugap.measure import GpuContext
from tests.fake_nvml import GIB, FakeGpu, FakeNvml

HOPPER = green.Granularity(min_sms=8, align=8)
AMPERE = green.Granularity(min_sms=4, align=2)


# ---- split arithmetic ----

@pytest.mark.parametrize(("cc", "expected"), [((6, 1), (1, 1)), ((7, 0), (2, 2)), ((7, 5), (2, 2)),
                                              ((8, 0), (4, 2)), ((8, 9), (4, 2)), ((9, 0), (8, 8)),
                                              ((10, 0), (8, 8)), ((12, 0), (8, 8))])
def test_granularity_follows_the_cuda_h_guideline(cc, expected):
    assert green.granularity(cc) == green.Granularity(*expected)


def test_granularity_takes_what_the_driver_reports_when_stricter():
    assert green.granularity((9, 0), reported_min=16, reported_align=16) == green.Granularity(16, 16)
    assert green.granularity((9, 0), reported_min=2, reported_align=2) == HOPPER  # looser: guideline stays
    assert green.granularity((8, 0), reported_align=3) == green.Granularity(4, 6)  # both must divide


@pytest.mark.parametrize(("count", "gran", "granted"), [(16, HOPPER, 16), (26, HOPPER, 32), (60, HOPPER, 64),
                                                        (1, HOPPER, 8), (14, AMPERE, 14), (3, AMPERE, 4),
                                                        (15, AMPERE, 16)])
def test_driver_grant_rounds_up_to_the_granularity(count, gran, granted):
    assert green.driver_grant(count, gran) == granted


# H100 SXM profiles (catalog): 1g.10gb 16, 1g.20gb 26, 2g.20gb 32, 3g.40gb 60, 4g.40gb 64, 7g.80gb 132
@pytest.mark.parametrize(("profile_sms", "request_sms"), [(16, 16), (26, 24), (32, 32), (60, 56), (64, 64),
                                                          (132, 128)])
def test_hopper_requests_are_the_nearest_multiple_of_8_that_fits(profile_sms, request_sms):
    assert green.request_sms(profile_sms, 132, HOPPER) == request_sms


@pytest.mark.parametrize("key", [spec.key for spec in catalog.catalog() if spec.mig_profiles])
def test_every_catalog_profile_gets_a_request_the_driver_will_not_round(key):
    spec = next(s for s in catalog.catalog() if s.key == key)
    gran = green.granularity(spec.compute_capability)
    for profile, sms in spec.mig_profiles.items():
        asked = green.request_sms(sms, spec.sm_count, gran)
        assert green.driver_grant(asked, gran) == asked <= spec.sm_count, profile
        assert abs(asked - sms) <= gran.align // 2 or asked == spec.sm_count // gran.align * gran.align
    if spec.compute_capability == (8, 0):  # A100: every profile is even, so emulated exactly
        assert all(green.request_sms(sms, spec.sm_count, gran) == sms for sms in spec.mig_profiles.values())


def test_request_below_the_minimum_and_a_card_too_small():
    assert green.request_sms(2, 132, HOPPER) == 8
    with pytest.raises(ValueError, match="cannot hold"):
        green.request_sms(4, 6, HOPPER)


# ---- a fake cuda.bindings.driver ----

class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_NOT_SUPPORTED = 801
    CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION = 915


class CUdevResourceType(enum.IntEnum):
    CU_DEV_RESOURCE_TYPE_SM = 1


class CUgreenCtxCreate_flags(enum.IntEnum):
    CU_GREEN_CTX_DEFAULT_STREAM = 1


class CUstream_flags(enum.IntEnum):
    CU_STREAM_NON_BLOCKING = 1


def _resource(sm_count: int) -> SimpleNamespace:
    return SimpleNamespace(sm=SimpleNamespace(smCount=sm_count))


class FakeDriver:
    """The driver calls mfugap.green makes, answering as cuda.bindings does: (CUresult, *outputs), the
    outputs None on failure. `fail[name] = CUresult` fails a call, `raise_in[name] = exc` raises from it;
    `live` holds the contexts and streams not yet destroyed. Splits round to multiples of 8 SMs and
    form no group above `max_group` SMs."""

    CUresult = CUresult
    CUdevResourceType = CUdevResourceType
    CUgreenCtxCreate_flags = CUgreenCtxCreate_flags
    CUstream_flags = CUstream_flags

    def __init__(self, sm_count=132, version=12080, max_group=128):
        self.sm_count, self.version, self.max_group = sm_count, version, max_group
        self.calls: list[str] = []
        self.fail: dict[str, CUresult] = {}
        self.raise_in: dict[str, Exception] = {}
        self.live: set[int] = set()
        self.args: dict[str, tuple] = {}
        self._next = 0x1000

    def _answer(self, name, args, *outputs):
        self.calls.append(name)
        self.args[name] = args
        if name in self.raise_in:
            raise self.raise_in[name]
        if name in self.fail:
            return (self.fail[name], *([None] * len(outputs)))
        return (CUresult.CUDA_SUCCESS, *outputs)

    def _handle(self) -> int:
        self._next += 0x10
        return self._next

    def cuInit(self, Flags):
        return self._answer("cuInit", (Flags,))

    def cuDriverGetVersion(self):
        return self._answer("cuDriverGetVersion", (), self.version)

    def cuDeviceGet(self, ordinal):
        return self._answer("cuDeviceGet", (ordinal,), 0)

    def cuDeviceGetDevResource(self, device, typename):
        assert typename == CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        return self._answer("cuDeviceGetDevResource", (device, typename), _resource(self.sm_count))

    def cuDevSmResourceSplitByCount(self, nbGroups, input_, useFlags, minCount):
        granted = -(-max(minCount, 8) // 8) * 8
        count = nbGroups if granted <= self.max_group else 0
        remaining = _resource(input_.sm.smCount - granted * count)
        groups = [_resource(granted if count else 0) for _ in range(nbGroups)]  # as many as asked, as real
        return self._answer("cuDevSmResourceSplitByCount", (nbGroups, input_, useFlags, minCount),
                            groups, count, remaining)

    def cuDevResourceGenerateDesc(self, resources, nbResources):
        assert len(resources) == nbResources == 1
        return self._answer("cuDevResourceGenerateDesc", (resources, nbResources), ("desc", resources[0]))

    def cuGreenCtxCreate(self, desc, dev, flags):
        handle = self._handle()
        answer = self._answer("cuGreenCtxCreate", (desc, dev, flags), handle)
        if answer[0] == CUresult.CUDA_SUCCESS:
            self.live.add(handle)
        return answer

    def cuGreenCtxStreamCreate(self, greenCtx, flags, priority):
        assert greenCtx in self.live
        handle = self._handle()
        answer = self._answer("cuGreenCtxStreamCreate", (greenCtx, flags, priority), handle)
        if answer[0] == CUresult.CUDA_SUCCESS:
            self.live.add(handle)
        return answer

    def cuStreamSynchronize(self, hStream):
        assert hStream in self.live
        return self._answer("cuStreamSynchronize", (hStream,))

    def cuStreamDestroy(self, hStream):
        self.live.discard(hStream)
        return self._answer("cuStreamDestroy", (hStream,))

    def cuGreenCtxDestroy(self, hCtx):
        self.live.discard(hCtx)
        return self._answer("cuGreenCtxDestroy", (hCtx,))


OPEN = ["cuInit", "cuDriverGetVersion", "cuDeviceGet", "cuDeviceGetDevResource"]
MAKE = ["cuDevSmResourceSplitByCount", "cuDevResourceGenerateDesc", "cuGreenCtxCreate",
        "cuGreenCtxStreamCreate"]
UNDO = ["cuStreamSynchronize", "cuStreamDestroy", "cuGreenCtxDestroy"]


# Parameter names that differ between cuda-bindings 12 and 13 for the same parameter (13 renamed
# cuDevSmResourceSplitByCount's useFlags). green.py passes every argument by position.
RENAMED = {"useFlags": "flags"}


def _parameters(fn) -> list[str]:
    return [RENAMED.get(p, p) for p in inspect.signature(fn).parameters]


def test_fake_driver_matches_the_real_bindings():
    real = pytest.importorskip("cuda.bindings.driver")
    for name in green.CALLS:
        # same parameters, in order, under the same names (up to a rename between versions)
        assert _parameters(getattr(FakeDriver, name))[1:] == _parameters(getattr(real, name)), name
    assert real.CUresult.CUDA_SUCCESS == CUresult.CUDA_SUCCESS
    for enum_type in (CUresult, CUdevResourceType, CUgreenCtxCreate_flags, CUstream_flags):
        for member in enum_type:
            assert int(getattr(getattr(real, enum_type.__name__), member.name)) == member.value, member


# ---- the adapter ----

def test_a_slice_is_made_and_undone_in_order():
    driver = FakeDriver()
    contexts = green.GreenContexts(driver, device_index=0)
    assert driver.calls == OPEN and contexts.total_sms == 132
    with contexts.slice("1g.20gb", 26, (9, 0)) as piece:
        assert driver.calls == OPEN + MAKE
        assert driver.args["cuDevSmResourceSplitByCount"][0::2] == (1, 0)  # one group, default flags
        assert driver.args["cuDevSmResourceSplitByCount"][3] == 24
        assert driver.args["cuGreenCtxStreamCreate"][1:] == (1, 0)  # non-blocking, default priority
        assert piece.stream in driver.live and len(driver.live) == 2
    assert driver.calls == OPEN + MAKE + UNDO
    assert not driver.live
    assert (piece.profile, piece.profile_sms) == ("1g.20gb", 26)
    assert (piece.requested_sms, piece.granted_sms) == (24, 24)
    assert piece.label == "emulated 1g.20gb: 24 SMs; memory and L2 shared"


def test_the_label_says_what_the_driver_granted():
    driver = FakeDriver()
    driver.cuDevSmResourceSplitByCount = lambda n, res, flags, count: (
        CUresult.CUDA_SUCCESS, [_resource(count + 8)], 1, _resource(0))
    with green.GreenContexts(driver).slice("1g.10gb", 16, (9, 0)) as piece:
        assert (piece.requested_sms, piece.granted_sms) == (16, 24)
        assert "24 SMs" in piece.label


def test_a_slice_is_undone_when_the_measurement_fails():
    driver = FakeDriver()
    with pytest.raises(KeyError), green.GreenContexts(driver).slice("2g.20gb", 32, (9, 0)):
        raise KeyError("measurement broke")
    assert driver.calls[-3:] == UNDO and not driver.live


@pytest.mark.parametrize("name", OPEN)
def test_a_failing_first_call_makes_green_contexts_unavailable(name):
    driver = FakeDriver()
    driver.fail[name] = CUresult.CUDA_ERROR_NOT_SUPPORTED
    with pytest.raises(green.GreenContextUnavailable) as info:
        green.GreenContexts(driver)
    assert str(info.value) == f"{name} failed: CUDA_ERROR_NOT_SUPPORTED"


def test_no_driver_library_is_unavailable_in_one_line():
    driver = FakeDriver()
    driver.raise_in["cuInit"] = RuntimeError('"cuda" is an NVIDIA driver library\nand can only be found...')
    with pytest.raises(green.GreenContextUnavailable) as info:
        green.GreenContexts(driver)
    assert str(info.value) == 'cuInit: RuntimeError: "cuda" is an NVIDIA driver library'


@pytest.mark.parametrize(("version", "text"), [(12020, "12.2"), (12040, "12.4")])
def test_an_old_driver_is_unavailable(version, text):
    """12.4 made green contexts, but their streams (cuGreenCtxStreamCreate) came with 12.5."""
    with pytest.raises(green.GreenContextUnavailable, match=rf"CUDA {text}; green contexts need 12\.5"):
        green.GreenContexts(FakeDriver(version=version))


def test_bindings_without_green_contexts_are_unavailable():
    fake = FakeDriver()
    old = SimpleNamespace(**{name: getattr(fake, name) for name in green.CALLS if name != "cuGreenCtxCreate"})
    with pytest.raises(green.GreenContextUnavailable, match="has no cuGreenCtxCreate"):
        green.GreenContexts(old)
    assert not fake.calls, "nothing is called before the bindings are known to be complete"


def test_missing_cuda_bindings_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(green.GreenContextUnavailable, match="cuda-bindings is not importable"):
        green.load_driver()


def test_load_driver_returns_the_bindings_module():
    pytest.importorskip("cuda.bindings.driver")
    driver = green.load_driver()
    assert all(hasattr(driver, name) for name in green.CALLS)


@pytest.mark.parametrize("name", MAKE[1:] + UNDO)
def test_any_later_failure_is_one_line_naming_the_call_and_nothing_is_left_behind(name):
    driver = FakeDriver()
    driver.fail[name] = CUresult.CUDA_ERROR_INVALID_VALUE
    contexts = green.GreenContexts(driver)
    with pytest.raises(green.GreenContextError) as info, contexts.slice("3g.40gb", 60, (9, 0)):
        pass
    assert str(info.value) == f"{name} failed: CUDA_ERROR_INVALID_VALUE"
    assert not driver.live
    context_made = name not in ("cuDevResourceGenerateDesc", "cuGreenCtxCreate")
    assert ("cuGreenCtxDestroy" in driver.calls) == context_made
    assert ("cuStreamDestroy" in driver.calls) == (name in UNDO)


def test_a_failing_split_makes_that_profile_unavailable():
    driver = FakeDriver()
    driver.fail["cuDevSmResourceSplitByCount"] = CUresult.CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION
    contexts = green.GreenContexts(driver)
    with pytest.raises(green.GreenContextUnavailable) as info, contexts.slice("4g.40gb", 64, (9, 0)):
        pass
    assert str(info.value) == ("cannot emulate 4g.40gb: cuDevSmResourceSplitByCount failed: "
                               "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION")


def test_a_split_forming_no_group_makes_that_profile_unavailable():
    driver = FakeDriver(max_group=120)  # 15 co-scheduled groups of 8, as seen on an H100
    with pytest.raises(green.GreenContextUnavailable, match="no group of 128 SMs out of 132"), \
            green.GreenContexts(driver).slice("7g.80gb", 132, (9, 0)):
        pass
    assert "cuGreenCtxCreate" not in driver.calls


def test_the_driver_reported_granularity_is_used():
    driver = FakeDriver()
    contexts = green.GreenContexts(driver)
    contexts._sm.sm.minSmPartitionSize, contexts._sm.sm.smCoscheduledAlignment = 16, 16
    assert contexts.granularity((9, 0)) == green.Granularity(16, 16)
    with contexts.slice("1g.20gb", 26, (9, 0)) as piece:
        assert piece.requested_sms == 32


# ---- the suite's emulated slices, with CuPy faked ----

H100_PROPS = {"major": 9, "minor": 0, "multiProcessorCount": 132, "l2CacheSize": 50 << 20,
              "totalGlobalMem": 79 * GIB}


def _gpu(name="NVIDIA H100 80GB HBM3") -> GpuContext:
    nvml = FakeNvml(FakeGpu(name=name, pci_device_id=0))
    device = discover(0, nvml=nvml, cuda_props=H100_PROPS)
    return GpuContext(device, catalog.resolve(name, sm_count=132, compute_capability=(9, 0),
                                              max_sm_clock_mhz=1980), nvml, "whole-gpu stream")


@pytest.fixture
def fake_cupy(monkeypatch):
    from tests import fake_cupy as cupy_fakes

    return cupy_fakes.install_for_streams(monkeypatch)


@pytest.fixture(autouse=True)
def no_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_suite_slice_is_a_partition_on_the_green_stream(fake_cupy):
    from mfugap.suites.test_mig_slices import emulated_slice

    gpu, driver = _gpu(), FakeDriver()
    with emulated_slice(gpu, green.GreenContexts(driver), 1) as (part, piece):
        assert piece.profile == "1g.20gb" and part.device.sm_count == 24
        assert part.stream.ptr == int(piece.stream)
        assert part.spec.peaks_tflops["bf16"] == pytest.approx(989.4 * 24 / 132)
        assert part.spec.mem_bw_gbps == gpu.spec.mem_bw_gbps  # memory shared: whole-card bandwidth
    assert not driver.live


def test_suite_skips_a_slice_whose_stream_cupy_cannot_use(fake_cupy):
    from mfugap.suites.test_mig_slices import emulated_slice

    def refuse(stream):
        raise RuntimeError("cudaErrorInvalidResourceHandle: invalid resource handle")

    fake_cupy.cuda.Event = lambda: SimpleNamespace(record=refuse, synchronize=lambda: None)
    driver = FakeDriver()
    with pytest.raises(pytest.skip.Exception, match=r"CuPy cannot run on a green-context stream here: "
                                                    r"RuntimeError: cudaErrorInvalidResourceHandle"), \
            emulated_slice(_gpu(), green.GreenContexts(driver), 1):
        pass
    assert not driver.live  # the green context and its stream are undone all the same


def test_suite_skips_a_profile_the_card_cannot_be_cut_into(fake_cupy):
    from mfugap.suites.test_mig_slices import emulated_slice

    with pytest.raises(pytest.skip.Exception, match=r"cannot emulate 7g\.80gb"), \
            emulated_slice(_gpu(), green.GreenContexts(FakeDriver(max_group=120)), 5):
        pass


@pytest.mark.parametrize(("name", "index", "says"), [("NVIDIA H100 NVL", 4, "has only 4 MIG profiles"),
                                                     ("NVIDIA L4", 0, "no MIG table")])
def test_suite_skips_profiles_the_card_lacks(fake_cupy, name, index, says):
    from mfugap.suites.test_mig_slices import emulated_slice

    with pytest.raises(pytest.skip.Exception, match=says), \
            emulated_slice(_gpu(name), green.GreenContexts(FakeDriver()), index):
        pass


def test_suite_fails_a_broken_driver_call_in_one_line(fake_cupy):
    from mfugap.suites.test_mig_slices import emulated_slice

    driver = FakeDriver()
    driver.fail["cuGreenCtxCreate"] = CUresult.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(pytest.fail.Exception, match=r"^cuGreenCtxCreate failed: CUDA_ERROR_INVALID_VALUE$"), \
            emulated_slice(_gpu(), green.GreenContexts(driver), 0):
        pass
