// Enough of CUDA C to run a kernel that uses no inline PTX on the CPU, for tests (see host_cuda.py).
//
// Blocks run one after another; a block's threads are coroutines (ucontext) on one OS thread, each run
// until it reaches a barrier (__syncthreads, a warp shuffle, __syncwarp) or returns, in thread order or
// in reverse (host_cuda.py runs every launch both ways and compares: a race shows as a difference). A
// barrier opens when every thread still running in its scope has reached it; when no barrier can open,
// the threads diverged, which on a GPU is a hang or undefined behaviour, and the launch fails with that
// message. __shared__ variables become statics, which every thread of the running block shares.
// Not modelled: __syncwarp and shuffle masks (every running lane of the warp takes part), and the
// undefined behaviour of __syncthreads after some threads of the block returned (it opens here).
#include <ucontext.h>

#include <algorithm>
#include <cmath>
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
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
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
static unsigned char* hc_dynamic_shared;  // `extern __shared__` arrays point here (host_cuda.py)

using std::isinf;
using std::isnan;
using std::max;
using std::min;

template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline float __fdividef(float a, float b) { return a / b; }

namespace hc {

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct Thread {
    ucontext_t context;
    uint3 index;
    State state = DONE;
    std::vector<char> stack;
};

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t SLOT_BYTES = 16;  // the largest value a shuffle moves

struct Block {
    std::vector<Thread> threads;
    std::vector<unsigned char> slots;  // one shuffle slot per thread
    ucontext_t scheduler;
    int current = 0;
    bool reverse = false;  // run threads in reverse order
    void (*kernel)(void**) = nullptr;
    void** args = nullptr;
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

inline int linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void wait_at(State barrier) {
    Block& b = block();
    Thread& t = b.threads[b.current];
    t.state = barrier;
    swapcontext(&t.context, &b.scheduler);
}

inline void thread_main() {
    Block& b = block();
    b.kernel(b.args);
    b.threads[b.current].state = DONE;  // returning resumes the scheduler through uc_link
    // a lane that returned has no value to shuffle: reading its slot gives 0xFF bytes (NaN)
    std::memset(&b.slots[b.current * SLOT_BYTES], 0xFF, SLOT_BYTES);
}

// Opens whatever barrier can open; false when none can although threads are waiting.
inline bool release(char* error, size_t error_len) {
    Block& b = block();
    const int n = (int)b.threads.size();
    bool any_waiting = false;
    bool released = false;
    for (int w = 0; w < (n + 31) / 32; ++w) {  // a warp barrier: every running lane of the warp there
        bool waiting = false, complete = true;
        for (int i = 32 * w; i < n && i < 32 * w + 32; ++i) {
            waiting |= b.threads[i].state == AT_WARP_BARRIER;
            complete &= b.threads[i].state == AT_WARP_BARRIER || b.threads[i].state == DONE;
        }
        any_waiting |= waiting;
        if (waiting && complete) {
            for (int i = 32 * w; i < n && i < 32 * w + 32; ++i) {
                if (b.threads[i].state == AT_WARP_BARRIER) b.threads[i].state = RUNNABLE;
            }
            released = true;
        }
    }
    if (released) return true;
    bool at_block = false, complete = true;
    for (Thread& t : b.threads) {
        at_block |= t.state == AT_BLOCK_BARRIER;
        complete &= t.state == AT_BLOCK_BARRIER || t.state == DONE;
    }
    if (at_block && complete) {
        for (Thread& t : b.threads) {
            if (t.state == AT_BLOCK_BARRIER) t.state = RUNNABLE;
        }
        return true;
    }
    if (any_waiting || at_block) {
        std::snprintf(error, error_len, "block (%u,%u,%u): threads wait at different barriers "
                      "(divergent __syncthreads or a shuffle some lanes skip): a hang on a GPU",
                      blockIdx.x, blockIdx.y, blockIdx.z);
    }
    return false;
}

inline int run_block(char* error, size_t error_len) {
    Block& b = block();
    ++block_epoch();
    for (size_t i = 0; i < b.threads.size(); ++i) {
        Thread& t = b.threads[i];
        t.index = {unsigned(i % blockDim.x), unsigned(i / blockDim.x % blockDim.y),
                   unsigned(i / (blockDim.x * blockDim.y))};
        t.state = RUNNABLE;
        getcontext(&t.context);
        t.context.uc_stack.ss_sp = t.stack.data();
        t.context.uc_stack.ss_size = t.stack.size();
        t.context.uc_link = &b.scheduler;
        makecontext(&t.context, thread_main, 0);
    }
    const size_t n = b.threads.size();
    for (;;) {
        for (size_t k = 0; k < n; ++k) {
            const size_t i = b.reverse ? n - 1 - k : k;
            if (b.threads[i].state != RUNNABLE) continue;
            b.current = (int)i;
            threadIdx = b.threads[i].index;
            swapcontext(&b.scheduler, &b.threads[i].context);
        }
        bool done = true;
        for (Thread& t : b.threads) done &= t.state == DONE;
        if (done) return 0;
        if (!release(error, error_len)) return 1;
    }
}

template <class T>
inline T exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= SLOT_BYTES, "shuffle of a value wider than 16 bytes");
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

// The launch: `kernel` unpacks `args` (pointers to each argument's value) and calls the kernel.
extern "C" int hc_launch(void (*kernel)(void**), void** args, unsigned gx, unsigned gy, unsigned gz,
                         unsigned bx, unsigned by, unsigned bz, size_t dynamic_shared_bytes, int reverse,
                         char* error, size_t error_len) {
    hc::Block& b = hc::block();
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    const size_t n = size_t(bx) * by * bz;
    b.threads.resize(n);
    for (hc::Thread& t : b.threads) t.stack.resize(hc::STACK_BYTES);
    b.slots.assign(n * hc::SLOT_BYTES, 0xFF);
    b.reverse = reverse != 0;
    b.kernel = kernel;
    b.args = args;
    std::vector<unsigned char> dynamic_shared(dynamic_shared_bytes + 16);
    hc_dynamic_shared = dynamic_shared.data();
    for (unsigned z = 0; z < gz; ++z) {
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = {x, y, z};
                std::memset(dynamic_shared.data(), 0xFF, dynamic_shared.size());  // NaN, as above
                if (hc::run_block(error, error_len)) return 1;
            }
        }
    }
    return 0;
}
