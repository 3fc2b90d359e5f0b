"""How mfugap is laid out for Python: kernels/ and suites/ are the subpackages mfugap.kernels and
mfugap.suites, installed (pyproject.toml's package-dir) or straight from a checkout that pip never built."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_that_was_not_installed_finds_kernels_and_suites():
    # -S: no site-packages, so no installed or editable mfugap; the checkout is the current directory
    code = "import mfugap.kernels as k, mfugap.suites as s; print(k.__file__); print(s.__file__)"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / folder / "__init__.py") for folder in ("kernels", "suites")]


def test_the_installed_package_maps_the_same_folders():
    import mfugap.kernels
    import mfugap.suites

    assert Path(mfugap.kernels.__file__).resolve().parent == ROOT / "kernels"
    assert Path(mfugap.suites.__file__).resolve().parent == ROOT / "suites"
