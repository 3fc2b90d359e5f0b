"""Emulated MIG slices on a GPU without MIG: CUDA green contexts confine a stream to a group of SMs.

A green context (driver API: CUDA 12.4+, and 12.5+ for a stream of its own, cuGreenCtxStreamCreate) owns
a group of SMs split off the device's SM resource; kernels launched on a stream created in it run only on
those SMs, while device memory, L2 and DRAM bandwidth stay shared with the rest of the GPU (a real MIG
slice partitions those too). One slice is made by

    cuDeviceGetDevResource(device, SM) -> cuDevSmResourceSplitByCount(1 group, minCount = SMs)
    -> cuDevResourceGenerateDesc -> cuGreenCtxCreate -> cuGreenCtxStreamCreate

and undone by cuStreamSynchronize, cuStreamDestroy, cuGreenCtxDestroy. The driver rounds minCount up to
its split granularity (cuda.h, green contexts section: 6.x from 1 SM, 7.x multiples of 2 from 2, 8.x
multiples of 2 from 4, 9.0+ multiples of 8 from 8), so each profile's SM count is rounded to that
granularity here first, and rows report the count the driver actually granted.

The driver calls go through `GreenContexts`, which takes the `cuda.bindings.driver` module as a
parameter so tests can hand it a fake.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

MIN_CUDA_VERSION = 12050  # cuDriverGetVersion form of 12.5: green contexts came in 12.4, streams in 12.5
CALLS = ("cuInit", "cuDriverGetVersion", "cuDeviceGet", "cuDeviceGetDevResource",
         "cuDevSmResourceSplitByCount", "cuDevResourceGenerateDesc", "cuGreenCtxCreate",
         "cuGreenCtxStreamCreate", "cuStreamSynchronize", "cuStreamDestroy", "cuGreenCtxDestroy")


class GreenContextError(RuntimeError):
    """A driver call failed; the message is one line naming the call."""


class GreenContextUnavailable(RuntimeError):
    """Green contexts (or a slice of this size) cannot be made here; the message is the skip reason."""


@dataclass(frozen=True)
class Granularity:
    min_sms: int  # smallest group the driver forms
    align: int  # every group's SM count is a multiple of this


# cuda.h's guideline for cuDevSmResourceSplitByCount with default flags, by compute capability major
# (6 stands for 6.x and older, 9 for 9.0 and newer).
_GUIDELINE = {6: Granularity(1, 1), 7: Granularity(2, 2), 8: Granularity(4, 2), 9: Granularity(8, 8)}


def granularity(compute_capability: tuple[int, int], reported_min: int = 0,
                reported_align: int = 0) -> Granularity:
    """The split granularity: cuda.h's guideline for the architecture, tightened by what the driver
    reports. CUDA 13 bindings expose minSmPartitionSize and smCoscheduledAlignment on the SM resource
    (0 here when the bindings lack them, as 12.x ones do)."""
    base = _GUIDELINE[min(max(compute_capability[0], 6), 9)]
    return Granularity(min_sms=max(base.min_sms, reported_min),
                       align=math.lcm(base.align, reported_align or 1))


def driver_grant(min_count: int, gran: Granularity) -> int:
    """The group size the driver forms for `min_count`: rounded up to the alignment, never under the
    minimum (26 SMs on Hopper become 32)."""
    return -(-max(min_count, gran.min_sms) // gran.align) * gran.align


def request_sms(profile_sms: int, total_sms: int, gran: Granularity) -> int:
    """The SM count to ask for so a profile's slice is emulated as closely as the driver allows: the
    multiple of the alignment nearest the profile's SMs, ties to fewer (Hopper: 26 -> 24, 60 -> 56, so
    1g.20gb and 3g stay apart from 2g and 4g), at least the driver's minimum and at most the largest
    group that fits the card (132 -> 128)."""
    largest = total_sms // gran.align * gran.align
    if largest < gran.min_sms:
        raise ValueError(f"{total_sms} SMs cannot hold a group of {gran.min_sms}")
    quotient, rest = divmod(profile_sms, gran.align)
    nearest = (quotient + (2 * rest > gran.align)) * gran.align
    return min(driver_grant(nearest, gran), largest)


@dataclass(frozen=True)
class GreenSlice:
    profile: str  # the MIG profile emulated, e.g. "1g.10gb"
    profile_sms: int  # SMs of the real slice (catalog MIG table)
    requested_sms: int  # minCount asked of the driver
    granted_sms: int  # SMs the driver put in the group: the number peaks scale with
    stream: Any  # CUstream; int(stream) is the handle cupy.cuda.ExternalStream takes

    @property
    def label(self) -> str:
        return f"emulated {self.profile}: {self.granted_sms} SMs; memory and L2 shared"


def load_driver() -> Any:
    """The cuda.bindings.driver module; GreenContextUnavailable when cuda-bindings is missing."""
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        reason = f"cuda-bindings is not importable ({exc}): pip install cuda-bindings"
        raise GreenContextUnavailable(reason) from exc
    return driver


class GreenContexts:
    """Green contexts on one CUDA device, through `driver` (cuda.bindings.driver or a fake of it).

    Construction runs the first calls (cuInit, cuDriverGetVersion, cuDeviceGet, cuDeviceGetDevResource);
    any failure there, an old driver, or bindings without the green-context calls raise
    GreenContextUnavailable.
    """

    def __init__(self, driver: Any, device_index: int = 0) -> None:
        self._drv = driver
        missing = [name for name in CALLS if not hasattr(driver, name)]
        if missing:
            raise GreenContextUnavailable(f"cuda-bindings has no {missing[0]}: green contexts need 12.5+")
        try:
            self._call("cuInit", 0)
            version = self._call("cuDriverGetVersion")
            if version < MIN_CUDA_VERSION:
                cuda = f"{version // 1000}.{version % 1000 // 10}"
                raise GreenContextUnavailable(f"the driver supports CUDA {cuda}; green contexts need 12.5+")
            self.device = self._call("cuDeviceGet", device_index)
            self._sm = self._call("cuDeviceGetDevResource", self.device,
                                  driver.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM)
        except GreenContextError as exc:
            raise GreenContextUnavailable(str(exc)) from exc

    @property
    def total_sms(self) -> int:
        return int(self._sm.sm.smCount)

    def granularity(self, compute_capability: tuple[int, int]) -> Granularity:
        sm = self._sm.sm
        return granularity(compute_capability, int(getattr(sm, "minSmPartitionSize", 0)),
                           int(getattr(sm, "smCoscheduledAlignment", 0)))

    @contextmanager
    def slice(self, profile: str, profile_sms: int,
              compute_capability: tuple[int, int]) -> Iterator[GreenSlice]:
        """A green context of about `profile_sms` SMs with one non-blocking stream in it; both are
        destroyed on exit, after the stream's work is done."""
        requested = request_sms(profile_sms, self.total_sms, self.granularity(compute_capability))
        group = self._split(profile, requested)
        desc = self._call("cuDevResourceGenerateDesc", [group], 1)  # descriptors have no destroy call
        flags = int(self._drv.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM)  # required by the API
        with ExitStack() as cleanup:  # undone in reverse: synchronize, destroy the stream, then the context
            context = self._call("cuGreenCtxCreate", desc, self.device, flags)
            cleanup.callback(self._call, "cuGreenCtxDestroy", context)
            # the API requires CU_STREAM_NON_BLOCKING; priority 0 is the default
            stream = self._call("cuGreenCtxStreamCreate", context,
                                int(self._drv.CUstream_flags.CU_STREAM_NON_BLOCKING), 0)
            cleanup.callback(self._call, "cuStreamDestroy", stream)
            cleanup.callback(self._call, "cuStreamSynchronize", stream)
            yield GreenSlice(profile=profile, profile_sms=profile_sms, requested_sms=requested,
                             granted_sms=int(group.sm.smCount), stream=stream)

    def _split(self, profile: str, sms: int) -> Any:
        """One group of `sms` SMs. A card that cannot be cut so (too few co-scheduled SM groups, e.g. 128
        of an H100's 132) makes this profile unavailable rather than broken."""
        try:
            groups, count, _remainder = self._call("cuDevSmResourceSplitByCount", 1, self._sm, 0, sms)
        except GreenContextError as exc:
            raise GreenContextUnavailable(f"cannot emulate {profile}: {exc}") from exc
        if count < 1:
            raise GreenContextUnavailable(f"cannot emulate {profile}: cuDevSmResourceSplitByCount formed no "
                                          f"group of {sms} SMs out of {self.total_sms}")
        return groups[0]

    def _call(self, name: str, *args: Any) -> Any:
        """driver.<name>(*args) -> its outputs after the CUresult: none, one value, or a tuple."""
        try:
            err, *outputs = getattr(self._drv, name)(*args)
        except Exception as exc:  # no libcuda, a wrong argument type: still one line naming the call
            detail = (str(exc).splitlines() or [""])[0]
            raise GreenContextError(f"{name}: {type(exc).__name__}: {detail}") from exc
        if err != self._drv.CUresult.CUDA_SUCCESS:
            raise GreenContextError(f"{name} failed: {getattr(err, 'name', err)}")
        if not outputs:
            return None
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
