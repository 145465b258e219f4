// The CUDA C subset the kernels in src/cuda/kernels/ use, for the host
// compiler: the kernels are compiled as C++ and run on the CPU by the
// emulated driver (emu.cpp). See docs/cuda-emu.md.
//
// Execution model: one block at a time; its threads are fibers on the
// launching OS thread, switched only at __syncthreads and warp shuffles, so
// `__shared__` variables are plain statics (one block is live at a time) and
// memory is sequentially consistent. __CUDA_ARCH__ stays undefined, so the
// kernels take their portable paths (no inline PTX).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace emu {
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
// Dynamic shared memory of the running launch (16-byte aligned).
void* dyn_smem();
void block_barrier();
// Exchange `v` with the lanes in `mask`; returns the value lane `src` (0..31
// within the warp) offered. Every lane named in the mask must call it.
uint64_t warp_shuffle(unsigned mask, uint64_t v, int src);
[[noreturn]] void kernel_fault(const char* what);
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }

template <class To, class From>
inline To emu_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
    To t;
    std::memcpy(&t, &v, sizeof t);
    return t;
}
inline float __int_as_float(int i) { return emu_bit_cast<float>(i); }
inline float __uint_as_float(unsigned u) { return emu_bit_cast<float>(u); }
inline int __float_as_int(float f) { return emu_bit_cast<int>(f); }
inline unsigned __float_as_uint(float f) { return emu_bit_cast<unsigned>(f); }

// PRMT in its default mode: selector nibble i picks byte i of the result from
// the eight bytes {y, x} (x is bytes 0..3); bit 3 of a nibble replicates the
// picked byte's sign bit.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        unsigned sel = (s >> (4 * i)) & 0xF;
        unsigned b = (unsigned)(v >> (8 * (sel & 7))) & 0xFF;
        if (sel & 8) b = (b & 0x80) ? 0xFF : 0;
        r |= b << (8 * i);
    }
    return r;
}

// Round-to-nearest single operations, never contracted (the library is
// built with -ffp-contract=off, as NVRTC treats these intrinsics).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

template <class T>
inline T __ldg(const T* p) {
    return *p;
}
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}
// One block runs at a time and its threads switch only at barriers and
// shuffles, so memory is already ordered and read-modify-writes are atomic.
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

inline void __syncthreads() { emu::block_barrier(); }

// Lane `src` of the warp's value `v` (up to 8 bytes) among the lanes in `mask`.
template <class T>
inline T emu_shuffle(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    uint64_t got = emu::warp_shuffle(mask, bits, src);
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) emu::kernel_fault("__shfl_xor_sync: bad width");
    int lane = (int)(threadIdx.x & 31);
    int src = lane ^ lane_mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;  // outside the segment: own value
    return emu_shuffle(mask, v, src);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    int lane = (int)(threadIdx.x & 31);
    return emu_shuffle(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}

inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)emu::warp_shuffle(mask, 0, (int)(threadIdx.x & 31)); }
