// Tessera CUDA kernels, compiled at run time by NVRTC (see cuda/module.rs).
// The files under kernels/ are concatenated in the order module.rs lists them
// into one translation unit; this one comes first.
//
// Activations are f32 everywhere. Weights are f32, int8 (with f32 scales) or
// bf16; int8 and bf16 weights are converted exactly to f32 inside the kernels,
// so a product is plain f32 math on the dequantized weight. No headers are
// included: NVRTC then needs no include path at all.
//
// Int8 weights: `q` is [m, kp] int8 (kp = k rounded up to 16, padding is zero),
// `scales` is [m, gpr] f32 (gpr = groups rounded up to 4, so rows are 16-byte
// aligned; padding is zero), one scale per `group` inputs of a row
// (tessera_model::INT8_GROUP, a power of two >= 16, passed at launch).
// Bf16 weights: [m, kp] bf16 bit patterns, kp = k rounded up to 8.
//
// Every kernel starts with KERNEL_PROLOGUE() before it reads anything an
// earlier kernel wrote, so the host may launch any of them with programmatic
// dependent launch (PDL, Hopper and later): the next kernel's blocks then start
// while this one drains, and GEMVs stream their first weights meanwhile.

#define WARP 32
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---------------------------------------------------------------- programmatic dependent launch

// Wait until the kernels this one depends on have finished and their writes
// are visible. A no-op when the kernel was launched without PDL.
__device__ __forceinline__ void grid_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Allow the next kernel in the stream to start launching its blocks. Called
// right after grid_dep_wait, so at most one kernel runs ahead of the chain.
__device__ __forceinline__ void grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#define KERNEL_PROLOGUE() \
    grid_dep_wait();      \
    grid_dep_launch()

// ---------------------------------------------------------------- recorded steps

// The position a recorded decode step (a CUDA graph, cuda/graph.rs) runs at:
// kernels that take positions add *dpos to them. The host writes it before
// each replay; eager launches pass null and their positions are absolute.
__device__ __forceinline__ int step_pos(const int* __restrict__ dpos) { return dpos ? *dpos : 0; }

// ---------------------------------------------------------------- number formats

// The four signed bytes of v as floats, without I2F (a quarter-rate
// instruction that made the GEMV compute-bound at ~60% of HBM bandwidth):
// bias each byte to unsigned, place it in the mantissa of 2^23 with PRMT, and
// subtract 2^23 + 128. Exact.
__device__ __forceinline__ void unpack4(int v, float* f) {
    unsigned u = (unsigned)v ^ 0x80808080u;
    f[0] = __int_as_float(__byte_perm(u, 0x4B000000u, 0x7650)) - 8388736.0f;
    f[1] = __int_as_float(__byte_perm(u, 0x4B000000u, 0x7651)) - 8388736.0f;
    f[2] = __int_as_float(__byte_perm(u, 0x4B000000u, 0x7652)) - 8388736.0f;
    f[3] = __int_as_float(__byte_perm(u, 0x4B000000u, 0x7653)) - 8388736.0f;
}

// f32 -> bf16 bits, round to nearest even; the same function as the `half`
// crate's bf16::from_f32, so device and host bf16 weights are identical.
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    unsigned r = x >> 16;
    if ((x & 0x8000u) != 0u && (x & 0x17fffu) != 0u) r += 1u;
    return (unsigned short)r;
}

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short b) { return __uint_as_float((unsigned)b << 16); }

// The two bf16 values packed in a 32-bit word (element 0 in the low half).
__device__ __forceinline__ void unpack_bf16x2(int v, float* f) {
    f[0] = __uint_as_float((unsigned)v << 16);
    f[1] = __uint_as_float((unsigned)v & 0xffff0000u);
}

// ---------------------------------------------------------------- shared numerics

// Rotate-half RoPE of the pair (a = x[d], b = x[d + half]) at `pos`:
// (a c - b s, b c + a s). Never contracted into FMAs, so every kernel that
// applies RoPE (in place, fused into the KV store, into attention, into a
// column copy) produces the same bits.
__device__ __forceinline__ void rope_cs(int pos, float inv_freq, float* c, float* s) {
    float angle = __fmul_rn((float)pos, inv_freq);
    sincosf(angle, s, c);
}
__device__ __forceinline__ float rope_lo(float a, float b, float c, float s) {
    return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}
__device__ __forceinline__ float rope_hi(float a, float b, float c, float s) {
    return __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Element d (< head_dim) of one head `hv` after RoPE at `pos`.
__device__ __forceinline__ float rope_elem(const float* hv, int d, int head_dim, int pos,
                                           const float* __restrict__ inv_freq) {
    int half = head_dim / 2;
    int dd = d < half ? d : d - half;
    float c, s;
    rope_cs(pos, inv_freq[dd], &c, &s);
    return d < half ? rope_lo(hv[d], hv[d + half], c, s) : rope_hi(hv[d - half], hv[d], c, s);
}

// Blocks that reduce a row (RMSNorm and the GEMVs that fuse it) have exactly
// this many threads, so the summation order, and hence every bit, is the same.
#define BLOCK 256

// 1 / sqrt(mean(x^2) + eps) of one row; `red` is 8 floats of shared memory.
// Called by every thread of a BLOCK-thread block. Rows of a multiple of 4
// floats at a 16-byte aligned address are read as float4 (one round trip for
// a 4096-wide row); the summation order depends only on (cols, alignment).
__device__ __forceinline__ float block_inv_rms(const float* __restrict__ xr, int cols, float eps, float* red) {
    float s = 0.f;
    if ((cols & 3) == 0 && ((size_t)xr & 15) == 0) {
        const float4* x4 = (const float4*)xr;
#pragma unroll 4
        for (int i = threadIdx.x; i < cols / 4; i += BLOCK) {
            float4 v = x4[i];
            s = fmaf(v.x, v.x, s);
            s = fmaf(v.y, v.y, s);
            s = fmaf(v.z, v.z, s);
            s = fmaf(v.w, v.w, s);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += BLOCK) s = fmaf(xr[c], xr[c], s);
    }
    s = warp_sum(s);
    if ((threadIdx.x & (WARP - 1)) == 0) red[threadIdx.x / WARP] = s;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < BLOCK / WARP; w++) t += red[w];
    __syncthreads(); // red is reused by the next row
    return 1.0f / sqrtf(t / (float)cols + eps);
}

// The RMSNorm output element: w * (x * inv), the HF order of operations.
__device__ __forceinline__ float norm_elem(float x, float w, float inv) { return __fmul_rn(w, __fmul_rn(x, inv)); }

// silu(g) * u, as the SwiGLU kernel and every fused GEMV epilogue compute it.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ---------------------------------------------------------------- memory helpers

// A 16-byte weight load that bypasses L1 (weights are streamed once; L1 keeps
// the activations).
__device__ __forceinline__ int4 ld_stream(const int4* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    int4 v;
    asm("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
#else
    return __ldg(p);
#endif
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Asynchronous global -> shared copies (sm_80+); `ok == false` writes zeros.
// Older GPUs copy synchronously (same results, no overlap).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(ok ? 16 : 0)
                 : "memory");
#else
    *(int4*)dst = ok ? *(const int4*)src : make_int4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(ok ? 4 : 0)
                 : "memory");
#else
    *(float*)dst = ok ? *(const float*)src : 0.f;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
