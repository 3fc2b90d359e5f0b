"""The fp32 GEMM ladder in Numba-CUDA: one rung per `rungNN_<name>.py` module, registry in `ladder`."""
