"""Rung 5, warp-tiled: each warp owns a 64 x 64 block of C, each thread 8 x 16 of it, from registers.

SGEMM_CUDA's kernel 10 (warptiling), in CUDA C like rung 4. A block of 128 threads (4 warps, 2 x 2) owns a
128 x 128 tile of C and walks K in steps of 16. A warp's 64 x 64 is four 64 x 16 column strips; lane l
computes rows 8(l/4) .. 8(l/4)+7 of the warp's block and, in each strip, columns 4(l%4) .. 4(l%4)+3. Per
k a thread reads 8 values of A (two float4) and 16 of B (four float4) from shared memory for 128 FMAs:
21 FMAs per 16-byte shared load (rung 4: 16), and, because the 32 lanes of a warp share 64 rows and 64
columns, the warp as a whole reads each shared value fewer times than rung 4's 16 x 16 thread grid does.
What it demonstrates: the warp, not the thread, is the unit that decides data reuse, the step before
tensor cores' warp-wide tiles.

As in rung 4: the next K tile is loaded into registers (four float4 of A, four of B per thread) while the
current one is computed, two shared-memory stages and one barrier per step, blocks in groups of GROUP_M
tile-rows. Thread t loads the 16 k of A row t (64 contiguous bytes) and stores them transposed, so a warp's
stores hit 32 consecutive columns: no bank conflict. Any M; N and K multiples of 4; A, B and C 16-byte
aligned. Target on an H100: cuBLAS fp32 is the ceiling; SGEMM_CUDA's kernel 10 reached 93.7% of it on an
A6000.

Checked on the CPU only so far: NVRTC for sm_80 and sm_90 (registers, no spills) and the real source run
on the host (tests/host_cuda.py) on ragged shapes. Its GPU numbers come after its check passes there.
"""
from __future__ import annotations

from mfugap.cuda_source import CudaSource
from mfugap.kernels import tile_order
from mfugap.kernels.gemm.ladder import VECTOR, Rung, c_defines, grouped_launch

BM = BN = 128  # C tile of one block
BK = 16  # K per step
WARP_M = WARP_N = 64  # C tile of one warp
THREADS = 128  # 4 warps, 2 x 2
STRIPS = 4  # 16-column strips of a warp's tile; a thread has 4 columns in each
GROUP_M = 8

SOURCE = CudaSource(c_defines(BM=BM, BN=BN, BK=BK, WARP_M=WARP_M, WARP_N=WARP_N, THREADS=THREADS,
                              STRIPS=STRIPS, GROUP_M=GROUP_M)
                    + tile_order.CODE + r"""
// Row-major A[M,K], B[K,N], C[M,N] in fp32; N % 4 == 0 and K % 4 == 0.
extern "C" __global__ void __launch_bounds__(THREADS, 2)
sgemm_warptiled(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                int M, int N, int K) {
    __shared__ __align__(16) float As[2][BK][BM];  // transposed; stores by consecutive threads: no padding
    __shared__ __align__(16) float Bs[2][BK][BN];
    int tile_row, tile_col;
    grouped_tile(blockIdx.x, (M + BM - 1) / BM, (N + BN - 1) / BN, GROUP_M, tile_row, tile_col);
    const int row0 = tile_row * BM, col0 = tile_col * BN;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int rows = (warp / 2) * WARP_M + (lane / 4) * 8;    // this thread's 8 rows of the block tile
    const int cols = (warp % 2) * WARP_N + (lane % 4) * 4;    // + 16 s: its 4 columns in strip s
    // loads: thread t takes A row t (4 float4 along k) and float4 number t + 128 i of B's 16 x 128
    const bool a_in = row0 + tid < M;
    const float* a_src = A + (long long)(row0 + tid) * K;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 a_next[4], b_next[4];

    float acc[8][4 * STRIPS];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4 * STRIPS; ++j) acc[i][j] = 0.f;

    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int k = k0 + 4 * i;
            a_next[i] = a_in && k < K ? __ldg(reinterpret_cast<const float4*>(a_src + k)) : zero;
            const int e = tid + THREADS * i, bk = k0 + e / 32, bc = col0 + e % 32 * 4;
            b_next[i] = bk < K && bc < N ? __ldg(reinterpret_cast<const float4*>(B + (long long)bk * N + bc))
                                         : zero;
        }
    };
    auto store = [&](int stage) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[stage][4 * i + 0][tid] = a_next[i].x;
            As[stage][4 * i + 1][tid] = a_next[i].y;
            As[stage][4 * i + 2][tid] = a_next[i].z;
            As[stage][4 * i + 3][tid] = a_next[i].w;
            const int e = tid + THREADS * i;
            *reinterpret_cast<float4*>(&Bs[stage][e / 32][e % 32 * 4]) = b_next[i];
        }
    };

    load(0);
    store(0);
    __syncthreads();
    const int steps = (K + BK - 1) / BK;
    for (int step = 0; step < steps; ++step) {
        const int cur = step & 1;
        const bool more = step + 1 < steps;
        if (more) load((step + 1) * BK);  // in flight while this tile is computed
#pragma unroll 4
        for (int kk = 0; kk < BK; ++kk) {
            float a[8], b[4 * STRIPS];
            *reinterpret_cast<float4*>(a) = *reinterpret_cast<const float4*>(&As[cur][kk][rows]);
            *reinterpret_cast<float4*>(a + 4) = *reinterpret_cast<const float4*>(&As[cur][kk][rows + 4]);
#pragma unroll
            for (int s = 0; s < STRIPS; ++s) {
                *reinterpret_cast<float4*>(b + 4 * s) =
                    *reinterpret_cast<const float4*>(&Bs[cur][kk][cols + 16 * s]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 4 * STRIPS; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {  // the other stage was last read before the previous barrier
            store(cur ^ 1);
            __syncthreads();
        }
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = row0 + rows + i;
        if (row >= M) continue;
#pragma unroll
        for (int s = 0; s < STRIPS; ++s) {
            const int col = col0 + cols + 16 * s;
            if (col < N) {
                *reinterpret_cast<float4*>(C + (long long)row * N + col) =
                    make_float4(acc[i][4 * s], acc[i][4 * s + 1], acc[i][4 * s + 2], acc[i][4 * s + 3]);
            }
        }
    }
}
""", kernels=("sgemm_warptiled",))


RUNG = Rung(5, "warptiled", "each warp a 64x64 block of C, each thread 8x16 of it (CUDA C): 21 FMAs per "
            "16-byte shared load", "sgemm_warptiled", grouped_launch(BM, BN, THREADS), tile=(BM, BN),
            source=SOURCE, multiple=VECTOR)
