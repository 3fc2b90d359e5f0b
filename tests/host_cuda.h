// Enough of CUDA C, and of the PTX our kernels inline, to run them on the CPU, for tests (host_cuda.py).
//
// Blocks run one after another; a block's threads are coroutines (ucontext) on one OS thread, each run
// until it reaches a barrier (__syncthreads, a warp shuffle, __syncwarp) or returns, in one of two orders
// (run_block; host_cuda.py runs every launch both ways and compares: a race shows as a difference). A
// barrier opens when every thread still running in its scope has reached it; when no barrier can open,
// the threads diverged, which on a GPU is a hang or undefined behaviour, and the launch fails with that
// message. __shared__ variables become statics, which every thread of the running block shares.
// Not modelled: __syncwarp and shuffle masks (every running lane of the warp takes part), and the
// undefined behaviour of __syncthreads after some threads of the block returned (it opens here).
#include <time.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define HC_SHARED static  // a __shared__ declaration host_cuda.py has taken note of

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};

#define HC_VECTOR(name, T)                                          \
    struct __align__(2 * sizeof(T)) name##2 { T x, y; };            \
    struct __align__(4 * sizeof(T)) name##4 { T x, y, z, w; };     \
    inline name##2 make_##name##2(T x, T y) { return {x, y}; }      \
    inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
HC_VECTOR(float, float)
HC_VECTOR(double, double)
HC_VECTOR(int, int)
HC_VECTOR(uint, unsigned)
#undef HC_VECTOR

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
// `extern __shared__` arrays point here (host_cuda.py); static, like the __shared__ arrays, so that every
// shared address is within 2 GiB of hc_shared_anchor and fits the 32 bits of a .shared address
constexpr size_t HC_MAX_DYNAMIC_SHARED = 48 * 1024;
static unsigned char hc_dynamic_shared[HC_MAX_DYNAMIC_SHARED] __attribute__((aligned(128)));
alignas(128) static char hc_shared_anchor;  // aligned, so offsets from it keep addresses' alignment

using std::isnan;
using std::min;

template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }

namespace hc {

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct CpAsync {
    void* dst;
    const void* src;
    int bytes, src_bytes;  // src_bytes < bytes: the rest is zero-filled
};

struct Thread {
    ucontext_t context;
    uint3 index;
    State state = DONE;
    std::vector<char> stack;
    std::vector<CpAsync> open;  // cp.async copies not yet committed to a group
    std::vector<std::vector<CpAsync>> committed;  // groups in commit order, not yet waited for
    unsigned cp_async_issued = 0;  // this thread's cp.async count in the block: its lanes' k-th go together
};

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t SLOT_BYTES = 64;  // the most one lane hands its warp: an mma's A, B and C fragments

struct Block {
    char fault[256] = "";  // the first broken rule an emulated instruction saw; fails the launch
    std::vector<Thread> threads;
    std::vector<unsigned char> slots;  // one shuffle slot per thread
    ucontext_t scheduler;
    int current = 0;
    bool by_warp = false;  // the second order: warp by warp from the last (run_block)
    void (*kernel)(void**) = nullptr;
    void** args = nullptr;
    // the shared destinations of each warp's k-th cp.async, by (warp, k): (lane, address, bytes)
    std::map<std::pair<int, unsigned>, std::vector<std::pair<int, std::pair<unsigned, int>>>> cp_async_stores;
};

inline Block& block() {
    static Block b;
    return b;
}

inline unsigned long long& block_epoch() {
    static unsigned long long epoch = 0;
    return epoch;
}

// Called where a __shared__ array is declared: the first thread of each block to get there fills it
// with 0xFF, which reads as NaN, so data left by an earlier block or launch cannot pass for a write.
inline void fresh_shared(void* array, size_t bytes) {
    static std::vector<std::pair<void*, unsigned long long>> seen;
    for (auto& [where, epoch] : seen) {
        if (where != array) continue;
        if (epoch != block_epoch()) std::memset(array, 0xFF, bytes);
        epoch = block_epoch();
        return;
    }
    std::memset(array, 0xFF, bytes);
    seen.emplace_back(array, block_epoch());
}

inline void fail(const char* what, unsigned long long address) {
    Block& b = block();
    if (!b.fault[0]) std::snprintf(b.fault, sizeof b.fault, "%s (address 0x%llx)", what, address);
}

inline int linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void wait_at(State barrier) {
    Block& b = block();
    Thread& t = b.threads[b.current];
    t.state = barrier;
    swapcontext(&t.context, &b.scheduler);
}

inline void complete(const std::vector<CpAsync>& copies) {
    for (const CpAsync& c : copies) {
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
}

inline void thread_main() {
    Block& b = block();
    b.kernel(b.args);
    Thread& me = b.threads[b.current];
    for (const auto& group : me.committed) complete(group);  // copies land even if nobody waits
    complete(me.open);
    b.threads[b.current].state = DONE;  // returning resumes the scheduler through uc_link
    // a lane that returned has no value to shuffle: reading its slot gives 0xFF bytes (NaN)
    std::memset(&b.slots[b.current * SLOT_BYTES], 0xFF, SLOT_BYTES);
}

// Opens every barrier that all its threads still running have reached; true if one opened.
inline bool open_barriers() {
    Block& b = block();
    const int n = (int)b.threads.size();
    bool opened = false;
    for (int w = 0; w < (n + 31) / 32; ++w) {  // a warp barrier: every running lane of the warp there
        bool waiting = false, complete = true;
        for (int i = 32 * w; i < n && i < 32 * w + 32; ++i) {
            waiting |= b.threads[i].state == AT_WARP_BARRIER;
            complete &= b.threads[i].state == AT_WARP_BARRIER || b.threads[i].state == DONE;
        }
        if (waiting && complete) {
            for (int i = 32 * w; i < n && i < 32 * w + 32; ++i) {
                if (b.threads[i].state == AT_WARP_BARRIER) b.threads[i].state = RUNNABLE;
            }
            opened = true;
        }
    }
    bool at_block = false, complete = true;
    for (Thread& t : b.threads) {
        at_block |= t.state == AT_BLOCK_BARRIER;
        complete &= t.state == AT_BLOCK_BARRIER || t.state == DONE;
    }
    if (at_block && complete) {
        for (Thread& t : b.threads) {
            if (t.state == AT_BLOCK_BARRIER) t.state = RUNNABLE;
        }
        opened = true;
    }
    return opened;
}

inline void run_thread(int i) {
    Block& b = block();
    b.current = i;
    threadIdx = b.threads[i].index;
    swapcontext(&b.scheduler, &b.threads[i].context);
}

// Forward: every runnable thread in index order, then the barriers that can open, round after round.
// Reverse: always the highest-numbered runnable thread, barriers opened as soon as they can, so the
// last warp runs as far as it can (to a __syncthreads or its end) before the one below it starts: a
// warp that reads what another warp has not written yet, for want of a barrier, then reads stale data.
inline int run_block(char* error, size_t error_len) {
    Block& b = block();
    ++block_epoch();
    const int n = (int)b.threads.size();
    for (int i = 0; i < n; ++i) {
        Thread& t = b.threads[i];
        t.index = {unsigned(i % blockDim.x), unsigned(i / blockDim.x % blockDim.y),
                   unsigned(i / (blockDim.x * blockDim.y))};
        t.state = RUNNABLE;
        t.open.clear();
        t.committed.clear();
        t.cp_async_issued = 0;
        getcontext(&t.context);
        t.context.uc_stack.ss_sp = t.stack.data();
        t.context.uc_stack.ss_size = t.stack.size();
        t.context.uc_link = &b.scheduler;
        makecontext(&t.context, thread_main, 0);
    }
    for (;;) {
        if (b.by_warp) {
            int i = n - 1;
            while (i >= 0 && b.threads[i].state != RUNNABLE) --i;
            if (i >= 0) {
                run_thread(i);
                bool warp_runnable = false;  // lanes below i still to run: no barrier of i's can open yet
                for (int j = i / 32 * 32; j < i; ++j) warp_runnable |= b.threads[j].state == RUNNABLE;
                if (!warp_runnable) open_barriers();
                continue;
            }
        } else {
            for (int i = 0; i < n; ++i) {
                if (b.threads[i].state == RUNNABLE) run_thread(i);
            }
        }
        bool done = true;
        for (Thread& t : b.threads) done &= t.state == DONE;
        if (done) return 0;
        if (!open_barriers()) {
            std::snprintf(error, error_len, "block (%u,%u,%u): threads wait at different barriers "
                          "(divergent __syncthreads or a shuffle some lanes skip): a hang on a GPU",
                          blockIdx.x, blockIdx.y, blockIdx.z);
            return 1;
        }
    }
}

template <class T>
inline T exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= SLOT_BYTES, "shuffle of a value wider than a slot");
    Block& b = block();
    const int me = linear_thread();
    std::memcpy(&b.slots[me * SLOT_BYTES], &v, sizeof(T));
    wait_at(AT_WARP_BARRIER);  // every lane has written
    T out;
    std::memcpy(&out, &b.slots[(me / 32 * 32 + src_lane) * SLOT_BYTES], sizeof(T));
    wait_at(AT_WARP_BARRIER);  // every lane has read, so the slots may be written again
    return out;
}

}  // namespace hc

inline void __syncthreads() { hc::wait_at(hc::AT_BLOCK_BARRIER); }
inline void __syncwarp(unsigned = 0xffffffffu) { hc::wait_at(hc::AT_WARP_BARRIER); }

// Lanes out of range follow the CUDA C++ Programming Guide: __shfl_sync takes the source lane modulo
// width; __shfl_xor_sync may read earlier groups of `width` lanes, and a later group gives the lane's own
// value, as does a __shfl_down_sync past the end of its group.
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int lane = hc::linear_thread() % 32;
    return hc::exchange(v, lane / width * width + (src % width + width) % width);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int lane = hc::linear_thread() % 32;
    const int src = lane ^ mask;
    return hc::exchange(v, src < (lane / width + 1) * width ? src : lane);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = hc::linear_thread() % 32;
    const int src = lane + (int)delta;
    return hc::exchange(v, src / width == lane / width ? src : lane);
}

// The PTX instructions our kernels use in inline asm; host_cuda.py rewrites each asm statement into a
// call of one of these. Semantics from the PTX ISA: warp-wide instructions (ldmatrix, mma) gather every
// lane's operands at a warp barrier, as the hardware does, and give each lane its part of the result.
namespace ptx {

inline unsigned long long globaltimer() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000ull + t.tv_nsec;
}

// The host runs one block at a time; as on an idle GPU with SMs to spare, each block gets an SM of its own.
inline unsigned smid() { return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); }

inline char* shared(unsigned address) { return &hc_shared_anchor + static_cast<int>(address); }

// cp.async: the copy happens when a wait_group covering its group returns (or when the thread ends),
// so a kernel that reads the destination before waiting reads what was there before.
// The destination reads as NaN from the issue until the wait: the ISA leaves it undefined in between.
inline void cp_async(unsigned dst, unsigned long long src, int bytes, int src_bytes) {
    if (dst % bytes) hc::fail("cp.async destination not aligned to its size", dst);
    if (src % bytes) hc::fail("cp.async source not aligned to its size", src);
    hc::Block& b = hc::block();
    std::memset(shared(dst), 0xFF, bytes);
    hc::Thread& t = b.threads[b.current];
    t.open.push_back({shared(dst), reinterpret_cast<const void*>(src), bytes, src_bytes});
    b.cp_async_stores[{hc::linear_thread() / 32, t.cp_async_issued++}].push_back(
        {hc::linear_thread() % 32, {dst, bytes}});
}
inline void cp_async_commit() {
    hc::Thread& t = hc::block().threads[hc::block().current];
    t.committed.push_back(t.open);
    t.open.clear();
}
inline void cp_async_wait(int pending) {
    hc::Thread& t = hc::block().threads[hc::block().current];
    while ((int)t.committed.size() > pending) {
        hc::complete(t.committed.front());
        t.committed.erase(t.committed.begin());
    }
}

// Shared-memory bank conflicts, by CUDA's bank model, over a launch: wavefronts needed beyond one per
// phase. A phase is the lanes whose accesses of `bytes` each span the 128 bytes of the 32 banks once
// (8 lanes for 16 bytes); accesses to distinct units of `bytes` in one bank group (address / bytes %
// (128 / bytes)) are served one wavefront each, the same unit is a broadcast. What Nsight Compute
// reports as shared-memory bank conflicts.
inline unsigned long long& ldmatrix_conflicts() {  // ldmatrix reads: a phase per 8x8 matrix
    static unsigned long long wavefronts = 0;
    return wavefronts;
}
inline unsigned long long& cp_async_conflicts() {  // cp.async stores into shared memory
    static unsigned long long wavefronts = 0;
    return wavefronts;
}

// Extra wavefronts of one phase: `addresses` of `bytes` each.
inline int phase_conflicts(const std::vector<unsigned>& addresses, int bytes) {
    std::vector<unsigned> units;
    int worst = 1;
    for (unsigned a : addresses) {
        const unsigned unit = a / bytes;
        if (std::find(units.begin(), units.end(), unit) != units.end()) continue;
        units.push_back(unit);
        const unsigned groups = 128 / bytes;
        worst = std::max(worst, (int)std::count_if(units.begin(), units.end(),
                                                   [&](unsigned u) { return u % groups == unit % groups; }));
    }
    return worst - 1;
}

// The cp.async stores of the block that just ran, warp instruction by warp instruction.
inline void count_cp_async_stores() {
    for (auto& [key, stores] : hc::block().cp_async_stores) {
        std::sort(stores.begin(), stores.end());
        const int bytes = stores.front().second.second;
        const int lanes_per_phase = std::max(1, 128 / bytes);
        for (size_t first = 0; first < stores.size();) {
            std::vector<unsigned> phase;
            const int group = stores[first].first / lanes_per_phase;
            for (; first < stores.size() && stores[first].first / lanes_per_phase == group; ++first) {
                phase.push_back(stores[first].second.first);
            }
            cp_async_conflicts() += phase_conflicts(phase, bytes);
        }
    }
    hc::block().cp_async_stores.clear();
}

inline int lane() { return hc::linear_thread() % 32; }
inline unsigned char* slot(int lane_in_warp) {
    hc::Block& b = hc::block();
    return &b.slots[(hc::linear_thread() / 32 * 32 + lane_in_warp) * hc::SLOT_BYTES];
}

// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lanes 8i..8i+7 give the row addresses of
// matrix i; lane l receives, of each matrix, row l/4, elements 2(l%4) and 2(l%4)+1 (of the transpose
// with .trans), the lower-indexed element in the lower half.
inline void ldmatrix(unsigned* d, int count, bool trans, unsigned address) {
    if (address % 16) hc::fail("ldmatrix row address not 16-byte aligned", address);
    std::memcpy(slot(lane()), &address, 4);
    hc::wait_at(hc::AT_WARP_BARRIER);
    const int l = lane();
    auto address_of = [](int lane_in_warp) {
        unsigned a;
        std::memcpy(&a, slot(lane_in_warp), 4);
        return a;
    };
    auto row = [&](int lane_in_warp) {
        return reinterpret_cast<const unsigned short*>(shared(address_of(lane_in_warp)));
    };
    if (l == 0) {  // once per warp-wide instruction
        for (int i = 0; i < count; ++i) {
            std::vector<unsigned> rows;
            for (int r = 0; r < 8; ++r) rows.push_back(address_of(8 * i + r));
            ldmatrix_conflicts() += phase_conflicts(rows, 16);
        }
    }
    for (int i = 0; i < count; ++i) {
        unsigned short lo, hi;
        if (trans) {
            lo = row(8 * i + 2 * (l % 4))[l / 4];
            hi = row(8 * i + 2 * (l % 4) + 1)[l / 4];
        } else {
            lo = row(8 * i + l / 4)[2 * (l % 4)];
            hi = row(8 * i + l / 4)[2 * (l % 4) + 1];
        }
        d[i] = lo | unsigned(hi) << 16;
    }
    hc::wait_at(hc::AT_WARP_BARRIER);
}

inline float bf16_value(unsigned short bits) { return __uint_as_float(unsigned(bits) << 16); }
inline float f16_value(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return float(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c. With g = lane/4 and
// t = lane%4: a0 (row g, k 2t..2t+1), a1 (row g+8), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..);
// b0 (k 2t..2t+1, col g), b1 (k 2t+8..); c/d 0,1 (row g, cols 2t, 2t+1), 2,3 (row g+8). Products are
// summed in double and rounded once to fp32: exact where the hardware is exact, within fp32 elsewhere.
struct MmaOperands {
    unsigned a[4], b[2];
    float c[4];
};

inline void mma_m16n8k16(float* d, bool bf16, const MmaOperands& mine) {
    std::memcpy(slot(lane()), &mine, sizeof mine);
    hc::wait_at(hc::AT_WARP_BARRIER);
    float a[16][16], b[16][8], c[16][8];
    auto value = [bf16](unsigned word, int half) {
        const unsigned short bits = half ? word >> 16 : word & 0xFFFF;
        return bf16 ? bf16_value(bits) : f16_value(bits);
    };
    for (int l = 0; l < 32; ++l) {
        MmaOperands o;
        std::memcpy(&o, slot(l), sizeof o);
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
            a[g][2 * t + h] = value(o.a[0], h);
            a[g + 8][2 * t + h] = value(o.a[1], h);
            a[g][2 * t + 8 + h] = value(o.a[2], h);
            a[g + 8][2 * t + 8 + h] = value(o.a[3], h);
            b[2 * t + h][g] = value(o.b[0], h);
            b[2 * t + 8 + h][g] = value(o.b[1], h);
            c[g][2 * t + h] = o.c[h];
            c[g + 8][2 * t + h] = o.c[2 + h];
        }
    }
    const int g = lane() / 4, t = lane() % 4;
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
        double sum = c[row][col];
        for (int k = 0; k < 16; ++k) sum += double(a[row][k]) * b[k][col];
        d[r] = float(sum);
    }
    hc::wait_at(hc::AT_WARP_BARRIER);
}

// cvt.rn.{bf16,f16}x2.f32 d, hi, lo: both rounded to nearest even, hi in the upper half.
inline unsigned short to_bf16(float x) {
    const unsigned bits = __float_as_uint(x);
    if (std::isnan(x)) return 0x7FFF;
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
}
inline unsigned short to_f16(float x) {
    const _Float16 h = static_cast<_Float16>(x);
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
inline unsigned cvt_x2(bool bf16, float hi, float lo) {
    return bf16 ? to_bf16(lo) | unsigned(to_bf16(hi)) << 16 : to_f16(lo) | unsigned(to_f16(hi)) << 16;
}

}  // namespace ptx

inline unsigned long long __cvta_generic_to_shared(const void* p) {
    return static_cast<unsigned>(static_cast<const char*>(p) - &hc_shared_anchor);
}
inline unsigned long long __cvta_generic_to_global(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// The last launch's extra shared-memory wavefronts (ptx::ldmatrix_conflicts, ptx::cp_async_conflicts).
extern "C" unsigned long long hc_ldmatrix_conflicts() { return ptx::ldmatrix_conflicts(); }
extern "C" unsigned long long hc_cp_async_conflicts() { return ptx::cp_async_conflicts(); }

// The launch: `kernel` unpacks `args` (pointers to each argument's value) and calls the kernel.
extern "C" int hc_launch(void (*kernel)(void**), void** args, unsigned gx, unsigned gy, unsigned gz,
                         unsigned bx, unsigned by, unsigned bz, size_t dynamic_shared_bytes, int by_warp,
                         char* error, size_t error_len) {
    hc::Block& b = hc::block();
    if (dynamic_shared_bytes > HC_MAX_DYNAMIC_SHARED) {  // host_cuda.py checks first; this guards the buffer
        std::snprintf(error, error_len, "%zu bytes of dynamic shared memory", dynamic_shared_bytes);
        return 1;
    }
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    const size_t n = size_t(bx) * by * bz;
    b.threads.resize(n);
    for (hc::Thread& t : b.threads) t.stack.resize(hc::STACK_BYTES);
    b.slots.assign(n * hc::SLOT_BYTES, 0xFF);
    b.by_warp = by_warp != 0;
    b.fault[0] = 0;
    b.kernel = kernel;
    b.args = args;
    ptx::ldmatrix_conflicts() = 0;
    ptx::cp_async_conflicts() = 0;
    std::vector<unsigned char> past(HC_MAX_DYNAMIC_SHARED - dynamic_shared_bytes);
    for (size_t i = 0; i < past.size(); ++i) past[i] = (dynamic_shared_bytes + i) % 2 ? 0x7F : 0xA5;
    for (unsigned z = 0; z < gz; ++z) {
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                std::memset(hc_dynamic_shared, 0xFF, dynamic_shared_bytes);  // NaN, as above
                // past the launch's dynamic shared memory: a NaN pattern a write would change
                std::memcpy(hc_dynamic_shared + dynamic_shared_bytes, past.data(), past.size());
                if (hc::run_block(error, error_len)) return 1;
                ptx::count_cp_async_stores();
                if (std::memcmp(hc_dynamic_shared + dynamic_shared_bytes, past.data(), past.size())) {
                    std::snprintf(error, error_len, "block (%u,%u,%u) wrote past its %zu bytes of dynamic "
                                  "shared memory", x, y, z, dynamic_shared_bytes);
                    return 1;
                }
                if (b.fault[0]) {
                    std::snprintf(error, error_len, "block (%u,%u,%u): %s", x, y, z, b.fault);
                    return 1;
                }
            }
        }
    }
    return 0;
}
