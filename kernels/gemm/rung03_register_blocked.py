"""Rung 3, register-blocked: each thread computes an 8 x 8 patch of C from registers (2-D blocktiling).

SGEMM_CUDA's kernel 5. A block of 256 threads owns a 128 x 128 tile of C and walks K in steps of 8,
staging a 128 x 8 slice of A and an 8 x 128 slice of B in shared memory (8 KiB). Per step each thread
loads 4 + 4 elements, then per k reads 8 values of A and 8 of B into registers and does 64 FMAs with
them: 4 FMAs per shared-memory load, where rung 2 needs two loads per FMA.

SGEMM_CUDA loads 16 bytes at a time (float4) and stores A transposed so a thread's 8 values are two
128-bit shared loads. Numba-CUDA cannot express that: its float32x4 is a value type, and a float32 array
cannot be read as float32x4 (no reinterpret_cast), so every load is 4 bytes. Hence the layout here: each
thread owns rows and columns 16 apart (strided, not contiguous), so a warp's shared reads of B hit 16
consecutive banks, a warp's C stores are runs of 16 consecutive floats, and A stays untransposed (its
shared stores would otherwise conflict 8 ways). Loads outside the matrices read zeros and stores outside
C are skipped, so any M, N, K works.
"""
from __future__ import annotations

from dataclasses import dataclass

from numba import cuda, float32

from mfugap.kernels.gemm.ladder import Dims, Rung, cdiv, load_or_zero


@dataclass(frozen=True)
class BlockTile:
    """A block computes bm x bn of C per bk-deep step of K; each thread tm x tn of it."""

    bm: int = 128
    bn: int = 128
    bk: int = 8
    tm: int = 8
    tn: int = 8

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def validate(self) -> None:
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"thread tile {self.tm}x{self.tn} must divide block tile {self.bm}x{self.bn}")
        if (self.bm * self.bk) % self.threads or (self.bk * self.bn) % self.threads:
            raise ValueError(f"{self.threads} threads cannot share the {self.bm}x{self.bk} and "
                             f"{self.bk}x{self.bn} staging loads evenly")


def build(tile: BlockTile) -> Rung:
    """The rung with `tile` compiled in: shared and local array shapes must be compile-time constants."""
    tile.validate()
    bm, bn, bk, tm, tn, threads = tile.bm, tile.bn, tile.bk, tile.tm, tile.tn, tile.threads
    row_threads, col_threads = bm // tm, bn // tn
    a_loads, b_loads = bm * bk // threads, bk * bn // threads

    @cuda.jit
    def register_blocked(a, b, c):
        a_tile = cuda.shared.array((bm, bk), float32)
        b_tile = cuda.shared.array((bk, bn), float32)
        # constant-indexed after unrolling, so these live in registers, not local memory
        acc = cuda.local.array((tm, tn), float32)
        a_frag = cuda.local.array(tm, float32)
        b_frag = cuda.local.array(tn, float32)
        tid = cuda.threadIdx.x
        trow, tcol = tid // col_threads, tid % col_threads
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0
        for k0 in range(0, a.shape[1], bk):
            # consecutive threads take consecutive elements of a row: coalesced global reads
            for s in range(a_loads):
                e = tid + s * threads
                a_tile[e // bk, e % bk] = load_or_zero(a, row0 + e // bk, k0 + e % bk)
            for s in range(b_loads):
                e = tid + s * threads
                b_tile[e // bn, e % bn] = load_or_zero(b, k0 + e // bn, col0 + e % bn)
            cuda.syncthreads()
            for kk in range(bk):
                for i in range(tm):
                    a_frag[i] = a_tile[trow + i * row_threads, kk]
                for j in range(tn):
                    b_frag[j] = b_tile[kk, tcol + j * col_threads]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_frag[i] * b_frag[j]
            cuda.syncthreads()
        for i in range(tm):
            row = row0 + trow + i * row_threads
            for j in range(tn):
                col = col0 + tcol + j * col_threads
                if row < c.shape[0] and col < c.shape[1]:
                    c[row, col] = acc[i, j]

    def launch_config(m: int, n: int) -> tuple[Dims, Dims]:
        return (cdiv(n, bn), cdiv(m, bm)), (threads,)

    return Rung(3, "register_blocked",
                f"{tm}x{tn} outputs per thread from registers, {bm}x{bn}x{bk} block tiles in shared memory",
                register_blocked, launch_config, tile=(bm, bn))


RUNG = build(BlockTile())
