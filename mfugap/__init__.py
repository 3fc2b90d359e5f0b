"""mfugap: measure GPU utilization and Model FLOP Utilization side by side."""
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("mfugap")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# Installed, the checkout's kernels/ and suites/ are the subpackages mfugap.kernels and mfugap.suites
# (pyproject.toml's package-dir). From a checkout that was not installed (PYTHONPATH=<checkout>, as on a
# machine without network where pip cannot build), the same names resolve through the checkout itself.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "kernels" / "__init__.py").is_file():
    __path__.append(str(_checkout))
