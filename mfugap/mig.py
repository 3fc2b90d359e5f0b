"""MIG slices: the fragmentation table of a GPU's full layouts, and one child process per MIG instance.

Fragmentation needs no GPU. A full layout allocates every compute slice the GPU has (seven on A100,
H100 and H200), yet the slices' SMs do not add up to the card's: an H100's seven 1g slices hold 7 x 16 =
112 of its 132 SMs. With every slice busy, whole-GPU MFU can therefore never exceed
sm_used / card SMs (84.8% for 7x1g on an H100), however well each slice does.

Running: one CUDA process sees one MIG instance, so `mfugap run` on a GPU with MIG enabled measures
each instance in its own `python -m pytest` process with CUDA_VISIBLE_DEVICES=MIG-<uuid>, one after the
other. Each child resolves its own slice name ("NVIDIA H100 80GB HBM3 MIG 1g.10gb"), hence its own
results folder and peaks scaled to the slice's SMs.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from mfugap import catalog
from mfugap.device import MigInstance, NoGpuError, discover

# Full layouts as the compute-slice sizes ("<n>g") they are made of, each size taking the GPU's smallest
# profile of that size (least memory): the placements hardware-reference.md section 3 tabulates.
LAYOUTS: tuple[tuple[int, ...], ...] = (
    (1, 1, 1, 1, 1, 1, 1),
    (2, 2, 2, 1),
    (3, 3),
    (4, 3),
    (7,),
)

_PROFILE = re.compile(r"^(\d+)g\.(\d+(?:\.\d+)?)gb$")


class MigTableError(ValueError):
    """A GPU the catalog does not know, or one without a verified MIG table there."""


@dataclass(frozen=True)
class Layout:
    layout: str  # e.g. "3x2g+1g"
    slices: tuple[str, ...]  # profile names, e.g. ("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb")
    sm_used: int
    sm_idle: int  # card SMs - sm_used
    max_whole_gpu_mfu_pct: float  # 100 * sm_used / card SMs: MFU ceiling with every slice allocated


@dataclass(frozen=True)
class Fragmentation:
    name: str
    key: str
    sm_count: int
    layouts: tuple[Layout, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "key": self.key, "sm_count": self.sm_count,
                "layouts": [{"layout": lay.layout, "slices": list(lay.slices), "sm_used": lay.sm_used,
                             "sm_idle": lay.sm_idle, "max_whole_gpu_mfu_pct": lay.max_whole_gpu_mfu_pct}
                            for lay in self.layouts]}


def lookup(name: str) -> catalog.GpuSpec:
    """The catalog entry for a catalog key ("h100-sxm") or an NVML name ("NVIDIA H100 80GB HBM3")."""
    by_key = {spec.key: spec for spec in catalog.catalog()}
    if name in by_key:
        return by_key[name]
    try:
        spec = catalog.resolve(name).spec
    except catalog.UnknownGpuError:
        spec = None
    if spec is None:
        raise MigTableError(f"{name!r} is not in the mfugap catalog (see `mfugap specs`)")
    return spec


def profile_size(profile: str) -> tuple[int, float]:
    """'1g.10gb' -> (1, 10.0): compute slices and memory in GB."""
    match = _PROFILE.match(profile)
    if match is None:
        raise ValueError(f"not a MIG profile name: {profile!r}")
    return int(match[1]), float(match[2])


def profiles(spec: catalog.GpuSpec) -> list[tuple[str, int]]:
    """The GPU's MIG profiles and their SMs, smallest first (compute slices, then memory)."""
    return sorted(spec.mig_profiles.items(), key=lambda item: profile_size(item[0]))


def grouped(items: Sequence[str]) -> str:
    """Runs of equal items counted: ['2g', '2g', '2g', '1g'] -> '3x2g+1g'."""
    runs = ((item, len(list(run))) for item, run in itertools.groupby(items))
    return "+".join(f"{count}x{item}" if count > 1 else item for item, count in runs)


def fragmentation(spec: catalog.GpuSpec) -> Fragmentation:
    """Every full layout the catalog's MIG table can build for `spec`, with its SMs used and idle."""
    if not spec.mig_profiles:
        raise MigTableError(f"{spec.name} has no MIG table in the mfugap catalog: it has no MIG, or its "
                            "slice SM counts are not verified")
    smallest: dict[int, str] = {}
    for name, _ in profiles(spec):
        smallest.setdefault(profile_size(name)[0], name)
    # A layout needing a size the table lacks (H100 NVL has no verified 4g or 7g) is left out.
    layouts = tuple(_layout(spec, sizes, [smallest[size] for size in sizes])
                    for sizes in LAYOUTS if all(size in smallest for size in sizes))
    return Fragmentation(name=spec.name, key=spec.key, sm_count=spec.sm_count, layouts=layouts)


def _layout(spec: catalog.GpuSpec, sizes: Sequence[int], slices: Sequence[str]) -> Layout:
    used = sum(spec.mig_profiles[profile] for profile in slices)
    return Layout(layout=grouped([f"{size}g" for size in sizes]), slices=tuple(slices), sm_used=used,
                  sm_idle=spec.sm_count - used, max_whole_gpu_mfu_pct=round(100 * used / spec.sm_count, 1))


def render(table: Fragmentation) -> str:
    """The table as text: a title line, then one row per layout."""
    title = f"{table.name} ({table.key}), {table.sm_count} SMs: full MIG layouts, whole-GPU MFU ceilings"
    rows = [(lay.layout, grouped(lay.slices), lay.sm_used, lay.sm_idle, lay.max_whole_gpu_mfu_pct)
            for lay in table.layouts]
    headers = ["layout", "slices", "SMs used", "SMs idle", "max whole-GPU MFU %"]
    return f"{title}\n{tabulate(rows, headers=headers, floatfmt='.1f')}"


# ---- one process per MIG instance ----

@dataclass(frozen=True)
class Child:
    """One MIG instance's run: a pytest process confined to the instance by CUDA_VISIBLE_DEVICES."""

    label: str
    argv: tuple[str, ...]
    env: dict[str, str]


def instances_to_run(index: int = 0, nvml: Any = None) -> list[MigInstance]:
    """GPU `index`'s MIG instances when MIG is enabled there and this process is not already confined
    to one of them (CUDA_VISIBLE_DEVICES=MIG-...); empty otherwise (empty slots are never listed)."""
    try:
        # cuda_props={}: no CUDA here, so the parent holds no context on a slice its children will use
        device = discover(index, nvml=nvml, cuda_props={})
    except NoGpuError:
        return []  # the in-process run opens the GPU itself and reports the reason
    if not device.mig_mode or device.is_mig:
        return []
    return list(device.mig_instances)


def child(instance: MigInstance, pytest_args: Sequence[str], environ: Mapping[str, str],
          python: str) -> Child:
    """The command that runs `pytest_args` inside `instance` alone."""
    sms = "SMs unknown" if instance.sm_count is None else f"{instance.sm_count} SMs"
    return Child(label=f"{instance.name or 'MIG instance'} ({instance.uuid}, {sms})",
                 argv=(python, "-m", "pytest", *pytest_args),
                 env={**environ, "CUDA_VISIBLE_DEVICES": instance.uuid})


def children(pytest_args: Sequence[str], index: int = 0, nvml: Any = None) -> list[Child]:
    """One child per MIG instance of GPU `index`; empty when the suites should run in this process."""
    return [child(instance, pytest_args, os.environ, sys.executable)
            for instance in instances_to_run(index, nvml)]


def run_children(kids: Sequence[Child]) -> list[int]:
    """Run the children one after the other (slices share the card's power and clocks, and one at a
    time keeps each measurement alone on the GPU); their exit codes in order. KeyboardInterrupt once the
    running child has finished, if Ctrl-C came meanwhile; the instances after it are not started."""
    codes = []
    for number, kid in enumerate(kids, 1):
        print(f"mfugap run: MIG instance {number}/{len(kids)}: {kid.label}", file=sys.stderr, flush=True)
        code, interrupted = wait_through_interrupts(subprocess.Popen(kid.argv, env=kid.env))
        codes.append(code)
        if interrupted:
            raise KeyboardInterrupt
    return codes


def wait_through_interrupts(process: subprocess.Popen) -> tuple[int, bool]:
    """The child's exit code, and whether Ctrl-C came while it ran. Ctrl-C reaches the whole process
    group, so the child has it too and saves the rows it measured on its way out (a CUDA sync, git, an
    fsync): wait for that instead of killing it after 0.25 s as subprocess.run would."""
    interrupted = False
    while True:
        try:
            return process.wait(), interrupted
        except KeyboardInterrupt:
            interrupted = True
