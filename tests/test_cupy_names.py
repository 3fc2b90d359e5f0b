"""Every CuPy name the GPU-only code reaches through a module (`cupy.cuda.runtime.memGetInfo`,
`runtime.hostAllocMapped` after `from cupy_backends.cuda.api import runtime`, ...) exists in the installed
CuPy. That code runs only on a GPU, where a misspelt name would cost a borrowed machine's time.

CuPy imports without a GPU, so this runs wherever CuPy is installed (CI's `cuda13` environment) and skips
elsewhere. Names under a library CuPy loads on first use (cuBLAS) resolve only where that library is
installed; without it they are left unchecked, and at least one chain must still resolve.
"""
import ast
import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mfugap", "kernels", "suites")
ROOTS = ("cupy", "cupy_backends")


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted CuPy path, from `import cupy [as x]` and `from cupy... import y [as x]`
    anywhere in the file (the GPU code imports CuPy inside functions)."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ROOTS:
                    found[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ROOTS:
            for a in node.names:
                found[a.asname or a.name] = f"{node.module}.{a.name}"
    return found


def _dotted(node: ast.expr) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _expand(parts: list[str] | None, aliases: dict[str, str]) -> str | None:
    """The dotted CuPy path of a chain whose longest aliased prefix is in `aliases`, else None."""
    for n in range(len(parts or ()), 0, -1):
        head = ".".join(parts[:n])
        if head in aliases:
            return ".".join([aliases[head], *parts[n:]])
    return None


def chains() -> Iterator[tuple[str, str]]:
    """(where, dotted CuPy path) of every outermost attribute chain rooted at a CuPy alias, also through
    plain assignments such as `runtime = cupy.cuda.runtime` or `self._cupy = cupy`."""
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = _dotted(node.targets[0]), _expand(_dotted(node.value), aliases)
                if target and value:
                    aliases[".".join(target)] = value
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                dotted = _expand(_dotted(node), aliases)
                if dotted:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", dotted


class Unloadable(Exception):
    """The chain passes through a module whose shared library is not installed here."""


def resolve(dotted: str) -> object:
    """The object at `dotted`, importing modules along the way; AttributeError if a name is missing."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, name)
        except ImportError as exc:  # CuPy's lazy libraries load on attribute access
            raise Unloadable(f"{'.'.join(parts[:i + 1])}: {exc}") from exc
        except AttributeError:
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError:
                raise AttributeError(f"{'.'.join(parts[:i])} has no {name!r}") from None
    return obj


def test_the_scan_finds_the_chains_the_gpu_code_uses():
    found = {dotted for _, dotted in chains()}
    # a cupy.X chain, a chain through `from cupy_backends... import runtime`, and one through an assignment
    assert "cupy.cuda.runtime.memGetInfo" in found
    assert "cupy_backends.cuda.api.runtime.hostAllocMapped" in found
    assert "cupy.cuda.runtime.memcpyAsync" in found
    assert "cupy.cuda.get_elapsed_time" in found  # through `self._cupy = cupy`


def test_every_cupy_name_the_code_uses_exists():
    pytest.importorskip("cupy", reason="CuPy is not installed (CI's cuda13 environment has it)")
    missing, resolved, unloadable = [], 0, set()
    for where, dotted in chains():
        try:
            resolve(dotted)
            resolved += 1
        except Unloadable as exc:
            unloadable.add(str(exc).split(":")[0])
        except AttributeError as exc:
            missing.append(f"{where}: {dotted} ({exc})")
    assert not missing, "names the installed CuPy lacks:\n" + "\n".join(missing)
    assert resolved > 20, f"only {resolved} chains resolved (unloadable here: {sorted(unloadable)})"


def test_the_cublas_types_named_as_strings_exist():
    """cublas_gemm names its cudaDataType and cublasComputeType constants as strings (looked up in
    setup). The compute types need libcublas, as on a GPU box; without it only the data types count."""
    pytest.importorskip("cupy", reason="CuPy is not installed (CI's cuda13 environment has it)")
    from mfugap.kernels.cublas_gemm import FORMATS

    for data_type, compute in FORMATS.values():
        resolve(f"cupy.cuda.runtime.{data_type}")
        with contextlib.suppress(Unloadable):
            resolve(f"cupy_backends.cuda.libs.cublas.{compute}")
