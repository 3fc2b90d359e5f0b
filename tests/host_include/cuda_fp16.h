// The part of CUDA's cuda_fp16.h our kernels use, for running them on the CPU (tests/host_cuda.py).
// Each operation is done in double, where the sums and products of fp16 values these kernels make are
// exact, and rounded once to fp16 (round to nearest even), as the hardware rounds an FMA or an add.
// Inlined by the preprocessor into the kernel's source, which is then compiled with host_cuda.h (and
// its <cmath>) included first: so no system header here, or it would be pasted in twice.
#pragma once

struct alignas(4) __half2 {
    _Float16 x, y;  // x at the lower address
};

inline __half2 __floats2half2_rn(float lo, float hi) { return {_Float16(lo), _Float16(hi)}; }

inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return {_Float16(std::fma(double(a.x), double(b.x), double(c.x))),
            _Float16(std::fma(double(a.y), double(b.y), double(c.y)))};
}

inline __half2 operator+(__half2 a, __half2 b) {
    return {_Float16(double(a.x) + double(b.x)), _Float16(double(a.y) + double(b.y))};
}
