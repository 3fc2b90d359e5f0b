"""Rung 4, vectorized: rung 3's 8 x 8 outputs per thread, with every global and shared access 16 bytes wide.

SGEMM_CUDA's kernels 6 and 12 (vectorized, double-buffered), in CUDA C because Numba cannot load a float4
from a float32 array (rung03's docstring). A block of 256 threads owns a 128 x 128 tile of C and walks K
in steps of 8:
- Each thread loads one float4 of A (a row's 4 consecutive k) and one float4 of B (4 consecutive columns)
  from global memory per step, for the NEXT step, into registers while it computes the current one.
- A is stored transposed in shared memory (As[k][m], rows padded by 4 floats) so that a thread's 8 A
  values are two float4 reads, like its 8 B values; with the padding the transposing scalar stores of a
  warp land in 32 distinct banks. Two shared-memory stages (2 x 8.2 KiB), one barrier per step.
- A thread's 8 rows and 8 columns are two groups of 4, 64 apart, so each 8-lane phase of a warp's float4
  reads of B covers 128 consecutive bytes (no bank conflict; its reads of A are broadcasts) and its C
  stores are 256-byte runs.
- Blocks are ordered in groups of GROUP_M tile-rows (tile_order.CODE) so the blocks running at
  once share panels of A and B in L2.
64 FMAs per 4 shared loads (16 per load, rung 3 has 4). Any M; N and K multiples of 4, so every 16-byte
vector lies wholly inside or outside a matrix: vectors outside read zeros and stores outside C are
skipped. A, B and C must start 16-byte aligned, as the whole arrays the workload allocates do. Target
on an H100: >= 60% of cuBLAS fp32 at 4096^3.

Checked on the CPU only so far: NVRTC for sm_80 and sm_90 (registers, no spills) and the real source run
on the host (tests/host_cuda.py) on ragged shapes. Its GPU numbers come after its check passes there.
"""
from __future__ import annotations

from mfugap.cuda_source import CudaSource
from mfugap.kernels import tile_order
from mfugap.kernels.gemm.ladder import VECTOR, Rung, c_defines, grouped_launch

BM = BN = 128  # C tile of one block
BK = 8  # K per step
THREADS = 256  # 16 x 16 threads, 8 x 8 outputs each
A_PAD = 4  # floats added to each transposed A row: conflict-free stores, rows still 16-byte aligned
GROUP_M = 8  # tile-rows per group in the block ordering

SOURCE = CudaSource(c_defines(BM=BM, BN=BN, BK=BK, THREADS=THREADS, A_PAD=A_PAD, GROUP_M=GROUP_M)
                    + tile_order.CODE + r"""
// Row-major A[M,K], B[K,N], C[M,N] in fp32; N % 4 == 0 and K % 4 == 0.
extern "C" __global__ void __launch_bounds__(THREADS, 2)
sgemm_vectorized(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                 int M, int N, int K) {
    __shared__ __align__(16) float As[2][BK][BM + A_PAD];
    __shared__ __align__(16) float Bs[2][BK][BN];

    int tile_row, tile_col;
    grouped_tile(blockIdx.x, (M + BM - 1) / BM, (N + BN - 1) / BN, GROUP_M, tile_row, tile_col);
    const int row0 = tile_row * BM, col0 = tile_col * BN;

    const int tid = threadIdx.x;
    const int trow = tid / 16, tcol = tid % 16;  // this thread's rows trow*4 + {0..3} (+64), same for columns
    const int a_row = tid / 2, a_k = tid % 2 * 4;     // its float4 of the 128 x 8 A tile
    const int b_k = tid / 32, b_col = tid % 32 * 4;   // its float4 of the 8 x 128 B tile
    const bool a_in = row0 + a_row < M, b_in = col0 + b_col < N;
    const float* a_src = A + (long long)(row0 + a_row) * K + a_k;
    const float* b_src = B + (long long)b_k * N + col0 + b_col;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    float4 a_next = a_in && a_k < K ? __ldg(reinterpret_cast<const float4*>(a_src)) : zero;
    float4 b_next = b_in && b_k < K ? __ldg(reinterpret_cast<const float4*>(b_src)) : zero;
    As[0][a_k + 0][a_row] = a_next.x;
    As[0][a_k + 1][a_row] = a_next.y;
    As[0][a_k + 2][a_row] = a_next.z;
    As[0][a_k + 3][a_row] = a_next.w;
    *reinterpret_cast<float4*>(&Bs[0][b_k][b_col]) = b_next;
    __syncthreads();

    const int steps = (K + BK - 1) / BK;
    for (int step = 0; step < steps; ++step) {
        const int cur = step & 1;
        const bool more = step + 1 < steps;
        if (more) {  // the next tile's loads are in flight while this one is computed
            const int k0 = (step + 1) * BK;
            a_next = a_in && k0 + a_k < K ? __ldg(reinterpret_cast<const float4*>(a_src + k0)) : zero;
            b_next = b_in && k0 + b_k < K
                ? __ldg(reinterpret_cast<const float4*>(b_src + (long long)k0 * N)) : zero;
        }
        // Two blocks per SM allow 128 registers. Unrolled by 4 or fully, the loop spills on sm_90 with
        // one of CUDA 12.9's and 13.5's NVRTC or the other; by 2 it fits both (120-124 registers).
#pragma unroll 2
        for (int kk = 0; kk < BK; ++kk) {
            float a[8], b[8];
            *reinterpret_cast<float4*>(a) = *reinterpret_cast<const float4*>(&As[cur][kk][trow * 4]);
            *reinterpret_cast<float4*>(a + 4) = *reinterpret_cast<const float4*>(&As[cur][kk][64 + trow * 4]);
            *reinterpret_cast<float4*>(b) = *reinterpret_cast<const float4*>(&Bs[cur][kk][tcol * 4]);
            *reinterpret_cast<float4*>(b + 4) = *reinterpret_cast<const float4*>(&Bs[cur][kk][64 + tcol * 4]);
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {  // the other stage was last read before the previous barrier
            As[cur ^ 1][a_k + 0][a_row] = a_next.x;
            As[cur ^ 1][a_k + 1][a_row] = a_next.y;
            As[cur ^ 1][a_k + 2][a_row] = a_next.z;
            As[cur ^ 1][a_k + 3][a_row] = a_next.w;
            *reinterpret_cast<float4*>(&Bs[cur ^ 1][b_k][b_col]) = b_next;
            __syncthreads();  // `more` is the same for the whole block, so this barrier is reached by all
        }
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = row0 + i / 4 * 64 + trow * 4 + i % 4;
        if (row >= M) continue;
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            const int col = col0 + g * 64 + tcol * 4;
            if (col < N) {
                *reinterpret_cast<float4*>(C + (long long)row * N + col) =
                    make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2], acc[i][4 * g + 3]);
            }
        }
    }
}
""", kernels=("sgemm_vectorized",))


RUNG = Rung(4, "vectorized", "rung 3 with 16-byte loads and stores (CUDA C), A transposed in shared memory, "
            "the next K tile loaded while this one is computed", "sgemm_vectorized",
            grouped_launch(BM, BN, THREADS), tile=(BM, BN), source=SOURCE, multiple=VECTOR)
