"""Run our CUDA C kernels on the CPU: the real source, compiled by g++ against tests/host_cuda.h.

Sources are preprocessed (CUDA headers from tests/host_include) and each inline-asm statement becomes a
call of its emulation in host_cuda.h (`translate_asm`; PTX without one makes the source not runnable,
with the reason). A HostKernels stands in for a CudaSource's `function(name)` and launches like a CuPy
RawKernel, `f(grid, block, args, stream=..., shared_mem=...)`,
converting arguments by CuPy's rules (a Python int is passed as long long, a float as double) and
refusing any argument whose type differs from the kernel's parameter. On a GPU a float given for a
`float` parameter is garbage; an int given for an `int` happens to work while it is small (the driver
reads the low 4 bytes), but the workload should say what it means. Launch limits are CUDA's: at most
1024 threads (or the kernel's __launch_bounds__) and 48 KiB of dynamic shared memory.

What the host would otherwise hide:
- Each array argument runs in a copy with GUARD_BYTES of a NaN pattern on both sides (GUARD_PATTERNS), at
  the same address modulo 256 as the original (so a misaligned view stays misaligned): a read past
  either end gets NaN, which the family's check then finds, and a write there fails the launch.
  Arguments that are the same array share one copy, as they share memory on a GPU.
- Every launch runs twice from the same inputs: threads in order, round by round, then warp by warp from
  the last (each as far as it gets before the next starts) and in reverse within a warp. Outputs that
  differ mean a race (a missing barrier) and fail the launch. Kernels that read the global timer run once:
  their outputs depend on time.
- The build adds UBSan's alignment and bounds checks: a misaligned vector access or an index past a
  fixed-size (shared or local) array fails the launch with the sanitizer's message. (GCC leaves arrays
  of structs such as `uint4 v[4]` unchecked.)
- Shared memory and the shuffle slots of returned lanes hold 0xFF (NaN) until written, and so does a
  cp.async destination from the copy's issue to its wait; misaligned ldmatrix and cp.async addresses
  fail the launch.
- Shared-memory bank conflicts (wavefronts past one per phase, by CUDA's bank model) are counted for
  ldmatrix reads and cp.async stores: `HostFunction.ldmatrix_conflicts` and `.cp_async_conflicts`,
  summed over its launches.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource

HEADER = Path(__file__).with_name("host_cuda.h")
INCLUDE = Path(__file__).with_name("host_include")  # host versions of the CUDA headers kernels include
COMPILER = shutil.which("g++")
MAX_THREADS = 1024
MAX_DYNAMIC_SHARED = 48 * 1024  # more needs cudaFuncSetAttribute, which no kernel here asks for
GUARD_BYTES = 4096
# 2-byte guard patterns, one per argument: NaN read as fp32, bf16 or fp16, and signalling, so arithmetic
# on a value read from a guard changes its bits, and a write there shows even when it stores NaN
GUARD_PATTERNS = tuple(range(0x7FA0, 0x7FB0))
ALIGNMENT = 256  # CuPy's allocations are at least this aligned; copies keep an array's offset from it
FLAGS = ["-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-fno-strict-aliasing",
         "-fsanitize=alignment,bounds"]

# C type (without const, __restrict__ and the pointer) -> NumPy dtype
C_TYPES = {
    "float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
    "unsigned": np.uint32, "long long": np.int64, "unsigned long long": np.uint64,
    "unsigned short": np.uint16, "short": np.int16, "unsigned char": np.uint8, "char": np.int8,
}
# Arrays a pointer to this type may also point at: fp16 held as its bit patterns
BITS_OF = {np.dtype(np.uint16): (np.dtype(np.float16),)}
# A pointer to a 16-byte vector reads raw words (bf16 bits as uint4, say): any array will do, aligned.
VECTOR_TYPES = ("float2", "float4", "double2", "uint2", "uint4", "int2", "int4", "__half2")
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                     r"(?:__launch_bounds__\(([^,)]+)[^)]*\)\s+)?(\w+)\s*\(([^)]*)\)")  # bounds, name, params
_ASM = re.compile(r"\basm\s*(?:volatile\s*)?\(")
_TYPEDEF = re.compile(r"\btypedef\s+([\w\s]+?)\s+(\w+)\s*;")
_TYPE = r"((?:__align__\(\d+\)\s+)?(?:(?:unsigned|signed|long|short|volatile)\s+)*[\w:]+)"
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+" + _TYPE + r"\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+" + _TYPE + r"\s+(\w+)((?:\s*\[[^\]]+\])*)\s*;")
_PARAM = re.compile(r"^(?P<type>.*?[\s*&])(?P<name>\w+)$")


class HostLaunchError(RuntimeError):
    """The launch could not run as written: bad arguments or configuration, a race, diverged barriers,
    a write out of bounds or a misaligned access."""


@dataclass(frozen=True)
class Kernel:
    params: list[Param]
    max_threads: str  # a C expression: the first argument of __launch_bounds__, or CUDA's limit


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # as the kernel declares it, without __restrict__
    dtype: Any  # None: a vector pointer, any element type
    pointer: bool


def host_runnable(source: CudaSource) -> str | None:
    """Why `source` cannot run on the host, or None when it can."""
    if COMPILER is None:
        return "no host C++ compiler (g++)"
    for header in re.findall(r"#include\s*[<\"]([^>\"]+)", source.code):
        if not (INCLUDE / header).is_file():
            return f"includes {header}, which tests/host_include does not provide"
    try:
        translate_asm(preprocessed(source.code))
    except HostLaunchError as exc:
        return str(exc)
    return None


@functools.cache
def preprocessed(code: str) -> str:
    """The source after the C preprocessor (its own macros expanded, comments gone), CUDA words intact."""
    return subprocess.run([COMPILER, "-E", "-P", "-x", "c++", f"-I{INCLUDE}", "-"], input=code, text=True,
                          capture_output=True, check=True).stdout


def parse_param(text: str, typedefs: dict[str, str] | None = None) -> Param:
    """One kernel parameter; `typedefs` maps names the source declared to the types they stand for."""
    text = " ".join(text.replace("__restrict__", " ").split())
    match = _PARAM.match(text)
    if match is None:
        raise ValueError(f"cannot read kernel parameter {text!r}")
    ctype = match["type"].strip()
    base = " ".join(re.sub(r"\*|\bconst\b|\bvolatile\b", " ", ctype).split())
    base = (typedefs or {}).get(base, base)
    pointer = ctype.endswith("*")
    if pointer and base in VECTOR_TYPES:
        return Param(match["name"], ctype, None, pointer)
    if base not in C_TYPES:
        raise ValueError(f"kernel parameter {text!r}: no NumPy type for {base!r}")
    return Param(match["name"], ctype, np.dtype(C_TYPES[base]), pointer)


def signatures(code: str) -> dict[str, Kernel]:
    """Every extern "C" kernel's parameters and thread limit in preprocessed `code` (so kernels made by
    macros count)."""
    typedefs = {alias: " ".join(target.split()) for target, alias in _TYPEDEF.findall(code)}
    return {name: Kernel([parse_param(p, typedefs) for p in params.split(",") if p.strip()],
                         bound or str(MAX_THREADS))
            for bound, name, params in _KERNEL.findall(code)}


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside strings and brackets."""
    parts, depth, start, quoted = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
    return [*parts, text[start:]]


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one just before `start`."""
    depth, quoted = 1, False
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"' and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth == 0:
                return i
    raise HostLaunchError("unbalanced parentheses in an asm statement")


def translate_asm(code: str) -> str:
    """Each `asm(...)` statement of preprocessed `code` as a call of its host emulation (ptx:: in
    host_cuda.h); an instruction without one raises HostLaunchError naming it."""
    out, pos = [], 0
    while match := _ASM.search(code, pos):
        end = _closing(code, match.end())
        sections = [*_split(code[match.end():end], ":"), "", "", ""][:4]
        template = bytes("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', sections[0])), "utf-8").decode(
            "unicode_escape")
        operands = [re.fullmatch(r'\s*"[^"]*"\s*\((.*)\)\s*', item, re.S).group(1)
                    for section in sections[1:3] for item in _split(section, ",") if item.strip()]
        out += [code[pos:match.start()], "{ ", ptx_call(template, operands), " }"]
        pos = end + 1
    return "".join(out) + code[pos:]


def ptx_call(template: str, operands: list[str]) -> str:
    """C++ for one PTX instruction: `template` with %n standing for operands[n]."""
    instructions = [i.strip() for i in template.split(";") if i.strip()]
    if len(instructions) != 1:
        raise HostLaunchError(f"asm with {len(instructions)} instructions: {template!r}")
    opcode, _, rest = instructions[0].partition(" ")

    def value(token: str) -> str | list[str]:
        token = token.strip()
        if token.startswith("{"):
            return [value(t) for t in token.strip("{}").split(",")]
        if token.startswith("["):
            return value(token.strip("[]"))
        return re.sub(r"%(\d+)", lambda m: f"({operands[int(m.group(1))]})", token)

    args = [value(t) for t in _split(rest, ",")] if rest.strip() else []
    if opcode == "mov.u64" and args[1] == "%%globaltimer":
        return f"{args[0]} = ptx::globaltimer();"
    if opcode == "mov.u32" and args[1] == "%%smid":
        return f"{args[0]} = ptx::smid();"
    if opcode in ("cp.async.ca.shared.global", "cp.async.cg.shared.global"):
        dst, src, size, *src_size = args
        return f"ptx::cp_async({dst}, {src}, {size}, {src_size[0] if src_size else size});"
    if opcode == "cp.async.commit_group":
        return "ptx::cp_async_commit();"
    if opcode == "cp.async.wait_group":
        return f"ptx::cp_async_wait({args[0]});"
    def stores(registers: list[str]) -> str:  # the emulation's results into the asm's output operands
        return " ".join(f"{reg} = hc_d[{i}];" for i, reg in enumerate(registers))

    if opcode.startswith("ldmatrix.sync.aligned.m8n8.x") and opcode.endswith(".shared.b16"):
        d, address = args
        return (f"unsigned hc_d[4]; ptx::ldmatrix(hc_d, {len(d)}, {str('.trans' in opcode).lower()}, "
                f"{address}); {stores(d)}")
    mma = re.fullmatch(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)\.\1\.f32", opcode)
    if mma:
        d, a, b, c = args
        return (f"float hc_d[4]; ptx::mma_m16n8k16(hc_d, {str(mma.group(1) == 'bf16').lower()}, "
                f"{{{{{', '.join(a)}}}, {{{', '.join(b)}}}, {{{', '.join(c)}}}}}); {stores(d)}")
    cvt = re.fullmatch(r"cvt\.rn\.(bf16|f16)x2\.f32", opcode)
    if cvt:
        d, hi, lo = args
        return f"{d} = ptx::cvt_x2({str(cvt.group(1) == 'bf16').lower()}, {hi}, {lo});"
    raise HostLaunchError(f"PTX {opcode} has no host emulation")


def host_code(code: str, kernels: dict[str, Kernel]) -> str:
    """The source with `extern __shared__` arrays pointed at the launch's buffer, `__shared__` variables
    filled with 0xFF (NaN) at the start of each block, so a read of an element no thread of the block
    wrote shows, plus for each kernel an entry that unpacks an array of argument pointers into a call and
    a function that returns its thread limit (evaluated where the kernel's constants are in scope)."""
    code = _DYNAMIC_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(hc_dynamic_shared);", code)
    code = _STATIC_SHARED.sub(r"HC_SHARED \1 \2\3; hc::fresh_shared(&\2, sizeof(\2));", code)
    untracked = re.search(r"__shared__[^;]*;", code)
    if untracked:
        raise HostLaunchError(f"cannot track {untracked.group(0)!r}: declare one __shared__ variable per "
                              "statement, of a one-word or unsigned/long/short type")
    entries = []
    for name, kernel in kernels.items():
        call = ", ".join(f"*static_cast<{p.ctype}*>(a[{i}])" for i, p in enumerate(kernel.params))
        entries.append(f'extern "C" void hc_entry_{name}(void** a) {{ {name}({call}); }}')
        entries.append(f'extern "C" int hc_threads_{name}() {{ return (int)({kernel.max_threads}); }}')
    return code + "\n" + "\n".join(entries) + "\n"


@functools.cache
def _build(code: str) -> tuple[ctypes.CDLL, dict[str, Kernel]]:
    code = translate_asm(preprocessed(code))
    kernels = signatures(code)
    folder = Path(tempfile.gettempdir()) / "mfugap-host-cuda"
    folder.mkdir(exist_ok=True)
    stem = folder / hashlib.sha256("\0".join([_compiler_version(), *FLAGS, HEADER.read_text(), code]).encode()
                                   ).hexdigest()[:16]
    library = stem.with_suffix(".so")
    if not library.exists():
        cpp, built = (Path(f"{stem}.{os.getpid()}{ext}") for ext in (".cpp", ".so"))  # one per process
        cpp.write_text(host_code(code, kernels))
        done = subprocess.run([COMPILER, *FLAGS, "-include", str(HEADER), "-o", str(built), str(cpp)],
                              capture_output=True, text=True)
        if done.returncode:
            raise HostLaunchError(f"g++ cannot build {cpp} for the host:\n{done.stderr[-3000:]}")
        cpp.unlink()
        built.replace(library)  # atomic: nobody loads half a library
    lib = ctypes.CDLL(str(library))
    lib.hc_launch.restype = ctypes.c_int
    lib.hc_ldmatrix_conflicts.restype = ctypes.c_ulonglong
    lib.hc_cp_async_conflicts.restype = ctypes.c_ulonglong
    lib.hc_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_size_t,
                              ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    return lib, kernels


@functools.cache
def _compiler_version() -> str:
    return subprocess.run([COMPILER, "--version"], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """The process's file descriptor 2 into `path`: where UBSan writes its reports."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _dim3(value: Any) -> tuple[int, int, int]:
    """A grid or block as CuPy's kernel call takes it: a tuple of 1 to 3 positive ints (an int is refused
    there too, by Function.__call__'s `tuple grid, tuple block`)."""
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3 or any(int(d) < 1 for d in value):
        raise HostLaunchError(f"launch dimensions must be a tuple of 1 to 3 positive integers, got {value!r}")
    return tuple(int(d) for d in value) + (1,) * (3 - len(value))


def _cupy_dtype(value: Any) -> np.dtype:
    """The type CuPy passes a scalar as (cupy/_core/_scalar.pyx: Python int -> int64, float -> float64)."""
    if isinstance(value, np.generic):
        return value.dtype
    if isinstance(value, bool):
        return np.dtype(np.bool_)
    if isinstance(value, int):
        return np.dtype(np.uint64 if value >= 1 << 63 else np.int64)
    if isinstance(value, float):
        return np.dtype(np.float64)
    raise HostLaunchError(f"CuPy cannot pass {type(value).__name__} to a kernel")


class HostFunction:
    """One kernel, called like a CuPy RawKernel."""

    def __init__(self, lib: ctypes.CDLL, name: str, kernel: Kernel, deterministic: bool = True) -> None:
        self.lib = lib
        self.deterministic = deterministic
        self.name = name
        self.params = kernel.params
        self.max_threads = int(getattr(lib, f"hc_threads_{name}")())
        self.entry = ctypes.cast(getattr(lib, f"hc_entry_{name}"), ctypes.c_void_p)
        self.launches = 0
        # extra shared-memory wavefronts (bank conflicts) of its ldmatrix reads and cp.async stores,
        # over all its launches
        self.ldmatrix_conflicts = 0
        self.cp_async_conflicts = 0

    def _argument(self, param: Param, value: Any, guarded: Guarded) -> ctypes._SimpleCData:
        where = f"{self.name}({param.ctype} {param.name})"
        if param.pointer:
            if not isinstance(value, np.ndarray):
                raise HostLaunchError(f"{where} needs an array, got {type(value).__name__}")
            if param.dtype is not None and value.dtype not in (param.dtype, *BITS_OF.get(param.dtype, ())):
                raise HostLaunchError(f"{where} needs {param.dtype} elements, got a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise HostLaunchError(f"{where} gets a strided view: the kernel would read past it")
            if "volatile" in param.ctype:  # mapped host memory that another thread writes while we run
                return ctypes.c_void_p(value.ctypes.data)
            return ctypes.c_void_p(guarded.pointer(value, where))
        dtype = _cupy_dtype(value)
        if dtype != param.dtype:
            raise HostLaunchError(f"{where} gets a {dtype} value: on a GPU its bytes would be misread")
        return np.ctypeslib.as_ctypes_type(dtype)(value)

    def __call__(self, grid: Any, block: Any, args: tuple, stream: Any = None, shared_mem: int = 0) -> None:
        if len(args) != len(self.params):
            raise HostLaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        grid3, block3 = _dim3(grid), _dim3(block)
        threads = int(np.prod(block3))
        if threads > self.max_threads:
            raise HostLaunchError(f"{self.name}: {threads} threads per block, the kernel allows "
                                  f"{self.max_threads}")
        if not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise HostLaunchError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, "
                                  "over CUDA's limit without an opt-in")
        guarded = Guarded()
        values = [self._argument(p, v, guarded) for p, v in zip(self.params, args, strict=True)]
        argv = (ctypes.c_void_p * max(1, len(values)))(*(ctypes.addressof(v) for v in values))
        inputs = guarded.snapshot()
        self._run(argv, grid3, block3, shared_mem, by_warp=False)
        self.ldmatrix_conflicts += self.lib.hc_ldmatrix_conflicts()  # the same in either order
        self.cp_async_conflicts += self.lib.hc_cp_async_conflicts()
        if self.deterministic:
            forward = guarded.snapshot()
            guarded.restore(inputs)
            self._run(argv, grid3, block3, shared_mem, by_warp=True)
        raced = self.deterministic and guarded.differs_from(forward)
        if raced:
            raise HostLaunchError(f"{self.name}: {raced} differs when the threads run in another order: "
                                  "a race (a missing __syncthreads, or threads writing the same element)")
        guarded.copy_back(self.name)
        self.launches += 1

    def _run(self, argv: Any, grid: tuple, block: tuple, shared_mem: int, by_warp: bool) -> None:
        error = ctypes.create_string_buffer(512)
        report = Path(tempfile.gettempdir()) / f"mfugap-host-cuda-{os.getpid()}.stderr"
        with _stderr_to(report):
            failed = self.lib.hc_launch(self.entry, argv, *grid, *block, shared_mem, int(by_warp), error,
                                        len(error))
        lines = report.read_text(errors="replace").splitlines()
        sanitizer = [line for line in lines if "runtime error" in line]
        report.unlink()
        if failed:
            raise HostLaunchError(f"{self.name}: {error.value.decode()}")
        if sanitizer:
            raise HostLaunchError(f"{self.name}: {sanitizer[0].split('runtime error: ', 1)[-1]}")


@dataclass
class GuardedCopy:
    """One array argument's copy: `band` holds it from byte `front` on, between guards."""

    array: np.ndarray
    band: np.ndarray
    where: str  # the kernel parameter, for messages
    front: int
    pristine: np.ndarray  # the band as made, to find writes into its guards

    @property
    def end(self) -> int:
        return self.front + self.array.nbytes


class Guarded:
    """Copies of a launch's array arguments between guard bands, written back after the launch."""

    def __init__(self) -> None:
        self.copies: dict[tuple[int, int], GuardedCopy] = {}  # by (address, bytes) of the original

    def pointer(self, array: np.ndarray, where: str) -> int:
        start, size = array.ctypes.data, array.nbytes
        key = (start, size)
        if key not in self.copies:
            for (other, other_size), copy in self.copies.items():
                if start < other + other_size and other < start + size:
                    raise HostLaunchError(f"{where} overlaps {copy.where} without being the same array")
            if len(self.copies) == len(GUARD_PATTERNS):
                raise HostLaunchError(f"{where}: more array arguments than guard patterns")
            length = size + 2 * GUARD_BYTES + 2 * ALIGNMENT
            pattern = GUARD_PATTERNS[len(self.copies)]
            band = np.full(-(-length // 2), pattern, dtype=np.uint16).view(np.uint8)[:length]
            # the copy starts where the original does modulo ALIGNMENT, after at least GUARD_BYTES
            front = GUARD_BYTES + (start - band.ctypes.data - GUARD_BYTES) % ALIGNMENT
            band[front:front + size] = array.reshape(-1).view(np.uint8)
            self.copies[key] = GuardedCopy(array, band, where, front, band.copy())
        copy = self.copies[key]
        return copy.band.ctypes.data + copy.front

    def snapshot(self) -> list[np.ndarray]:
        return [copy.band.copy() for copy in self.copies.values()]

    def restore(self, snapshot: list[np.ndarray]) -> None:
        for copy, saved in zip(self.copies.values(), snapshot, strict=True):
            copy.band[:] = saved

    def differs_from(self, snapshot: list[np.ndarray]) -> str | None:
        """The first argument whose bytes differ from `snapshot`, or None."""
        for copy, saved in zip(self.copies.values(), snapshot, strict=True):
            if not np.array_equal(copy.band, saved):
                return copy.where
        return None

    def copy_back(self, kernel: str) -> None:
        for c in self.copies.values():
            before = int((c.band[:c.front] != c.pristine[:c.front]).sum())
            after = int((c.band[c.end:] != c.pristine[c.end:]).sum())
            if before or after:
                raise HostLaunchError(f"{kernel}: wrote outside {c.where} ({before} bytes before it, "
                                      f"{after} after)")
            c.array.reshape(-1).view(np.uint8)[:] = c.band[c.front:c.end]


class HostKernels:
    """A CudaSource's kernels compiled for the host; `function` mirrors CudaSource.function."""

    def __init__(self, source: CudaSource) -> None:
        reason = host_runnable(source)
        if reason:
            raise HostLaunchError(f"cannot run on the host: {reason}")
        lib, kernels = _build(source.code)
        missing = set(source.kernels) - set(kernels)
        if missing:
            raise HostLaunchError(f"declared kernels not found in the source: {sorted(missing)}")
        timed = "globaltimer" in source.code
        self.functions = {name: HostFunction(lib, name, kernel, deterministic=not timed)
                          for name, kernel in kernels.items()}

    def function(self, name: str) -> HostFunction:
        return self.functions[name]
