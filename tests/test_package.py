"""How mfugap is laid out for Python: kernels/ and suites/ are the subpackages mfugap.kernels and
mfugap.suites, installed (pyproject.toml's package-dir) or straight from a checkout that pip never built."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_that_was_not_installed_finds_kernels_and_suites():
    # -S: no site-packages, so no installed or editable mfugap; the checkout is the current directory
    code = "import mfugap.kernels as k, mfugap.suites as s; print(k.__file__); print(s.__file__)"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / folder / "__init__.py") for folder in ("kernels", "suites")]


def test_every_subpackage_is_in_the_wheel_under_its_mfugap_name():
    """pyproject.toml lists packages by hand (kernels/ and suites/ are renamed into mfugap): a new
    folder with an __init__.py that is not listed would be missing from every non-editable install."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: Path(folder) for name, folder in config["package-dir"].items()}
    assert folders == {"mfugap": Path("mfugap"), "mfugap.kernels": Path("kernels"),
                       "mfugap.suites": Path("suites")}
    on_disk = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join([name, *parts]))
    assert set(config["packages"]) == on_disk
