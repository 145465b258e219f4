// ---------------------------------------------------------------- GEMV variants v2 and v3 (int8 and bf16)
//
// y = x [n, k] @ w[m, k]^T for n <= 16 activation rows, weights dequantized in
// the kernel, f32 accumulation, with the fused epilogues of v1 (mode 0 store,
// 1 accumulate into y, 2 SwiGLU over [gate rows | up rows]) and, new, an
// optional fused RMSNorm of x (norm weight `nw`, computed while x is staged
// into shared memory; block 0 also writes the normalized x to `x_out`).
//
// Numerics contract shared by every GEMV variant, v1 included, so that the
// variant choice never changes a bit: a weight row is cut into 16-byte chunks
// (16 int8 or 8 bf16 weights); lane l of the warp that owns the row sums the
// chunks l, l + 32, l + 64, ... in that order, each chunk as
//     d = fmaf(w[e], x[e], d) over its elements from d = 0, then
//     acc = fmaf(scale, d, acc) (int8) or acc = acc + d (bf16),
// and the 32 lane sums are combined by warp_sum; epilogues are the
// expressions of the standalone kernels (silu_mul, y + p, norm_elem).
//
// Activations staged in shared memory are zero-padded to a multiple of 16 (32
// for int4, so a chunk never reads past its row) and
// stored float4-swizzled (float4 L at L ^ ((L >> 3) & 3)), which makes the
// lanes' 64-byte x reads bank-conflict free.

struct WInt8 {
    static constexpr int E = 16; // weights per 16-byte chunk
    static constexpr bool QUANT = true; // one scale per chunk (group >= E)
    static __device__ __forceinline__ void decode(int4 v, float* w) {
        unpack4(v.x, w);
        unpack4(v.y, w + 4);
        unpack4(v.z, w + 8);
        unpack4(v.w, w + 12);
    }
    static __device__ __forceinline__ float combine(float acc, float d, float s) { return fmaf(s, d, acc); }
};

// Int4: two signed 4-bit values per byte (element 2b in the low nibble of
// byte b), -8..7; 32 per chunk, one scale per chunk (group 32).
struct WInt4 {
    static constexpr int E = 32;
    static constexpr bool QUANT = true;
    static __device__ __forceinline__ void unpack8(int v, float* f) {
        // Bias each nibble to unsigned (XOR 8), place it in the mantissa of
        // 2^23 and subtract 2^23 + 8, as unpack4 does for bytes. Exact.
        unsigned u = (unsigned)v ^ 0x88888888u;
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = __uint_as_float(0x4B000000u | ((u >> (4 * e)) & 0xFu)) - 8388616.0f;
    }
    static __device__ __forceinline__ void decode(int4 v, float* w) {
        unpack8(v.x, w);
        unpack8(v.y, w + 8);
        unpack8(v.z, w + 16);
        unpack8(v.w, w + 24);
    }
    static __device__ __forceinline__ float combine(float acc, float d, float s) { return fmaf(s, d, acc); }
};

struct WBf16 {
    static constexpr int E = 8;
    static constexpr bool QUANT = false;
    static __device__ __forceinline__ void decode(int4 v, float* w) {
        unpack_bf16x2(v.x, w);
        unpack_bf16x2(v.y, w + 2);
        unpack_bf16x2(v.z, w + 4);
        unpack_bf16x2(v.w, w + 6);
    }
    static __device__ __forceinline__ float combine(float acc, float d, float) { return __fadd_rn(acc, d); }
};

__device__ __forceinline__ int swz4(int l) { return l ^ ((l >> 3) & 3); }

// Bring bytes [p, p + bytes) into L1, one 128-byte line per thread: a hint
// (no registers, no result; a no-op off the GPU). For the RMSNorm weight of a
// fused norm, which never changes during a run: issued before grid_dep_wait
// like the first weight loads, so stage_x's reads of it hit L1 instead of
// waiting on a DRAM round trip after the reduction.
__device__ __forceinline__ void prefetch_l1(const void* p, int bytes) {
#if defined(__CUDA_ARCH__)
    const size_t skew = (size_t)p & 127;
    const char* line = (const char*)p - skew;
    for (int off = threadIdx.x * 128; off < bytes + (int)skew; off += BLOCK * 128)
        asm volatile("prefetch.global.L1 [%0];" ::"l"(line + off));
#endif
}

// Copy the n activation rows into shared memory `xs` ([n][kx], kx = k rounded
// up to 16, swizzled), applying RMSNorm when nw is set; block 0 also writes
// the normalized rows to x_out. Ends with a barrier.
__device__ __forceinline__ void stage_x(const float* __restrict__ x, int n, int k, int kx,
                                        const float* __restrict__ nw, float eps, float* __restrict__ x_out,
                                        float* xs, float* red) {
    const bool out = x_out != nullptr && blockIdx.x == 0;
    for (int b = 0; b < n; b++) {
        const float* xr = x + (size_t)b * k;
        float inv = nw ? block_inv_rms(xr, k, eps, red) : 1.f;
        float* row = xs + (size_t)b * kx;
        if ((k & 3) == 0) {
            // Rows are 16-byte aligned: whole float4s (a float4 stays whole under the swizzle).
            for (int i = threadIdx.x; i < kx / 4; i += BLOCK) {
                float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
                if (4 * i < k) {
                    v = ((const float4*)xr)[i];
                    if (nw) {
                        float4 g = ((const float4*)nw)[i];
                        v = make_float4(norm_elem(v.x, g.x, inv), norm_elem(v.y, g.y, inv), norm_elem(v.z, g.z, inv),
                                        norm_elem(v.w, g.w, inv));
                    }
                    if (out) ((float4*)(x_out + (size_t)b * k))[i] = v;
                }
                ((float4*)row)[swz4(i)] = v;
            }
        } else {
            for (int c = threadIdx.x; c < kx; c += BLOCK) {
                float v = c < k ? (nw ? norm_elem(xr[c], nw[c], inv) : xr[c]) : 0.f;
                row[(swz4(c >> 2) << 2) | (c & 3)] = v;
                if (out && c < k) x_out[(size_t)b * k + c] = v;
            }
        }
    }
    __syncthreads();
}

// Elements c .. c+E of activation row b: from shared memory (swizzled, padded)
// or from global memory (L1-cached, ragged tail guarded).
template <int E>
__device__ __forceinline__ void load_x(const float* __restrict__ xg, const float* xs, int kx, int k, bool smem,
                                       bool vec, int b, int c, float* xr) {
    if (smem) {
        const float* row = xs + (size_t)b * kx;
#pragma unroll
        for (int j = 0; j < E / 4; j++) {
            float4 v = *(const float4*)(row + (swz4((c >> 2) + j) << 2));
            xr[4 * j] = v.x;
            xr[4 * j + 1] = v.y;
            xr[4 * j + 2] = v.z;
            xr[4 * j + 3] = v.w;
        }
    } else {
        const float* row = xg + (size_t)b * k + c;
        if (vec && c + E <= k) {
#pragma unroll
            for (int j = 0; j < E / 4; j++) {
                float4 v = __ldg((const float4*)row + j);
                xr[4 * j] = v.x;
                xr[4 * j + 1] = v.y;
                xr[4 * j + 2] = v.z;
                xr[4 * j + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) xr[e] = c + e < k ? row[e] : 0.f;
        }
    }
}

// acc[j][b] += weight chunk wf[j] . activation chunk of row b, for b < n.
template <class WT, int NB, int R>
__device__ __forceinline__ void chunk_fma(const float (&wf)[R][WT::E], const float (&sc)[R],
                                          const float* __restrict__ xg, const float* xs, int kx, int k, bool smem,
                                          bool vec, int n, int c, float (&acc)[R][NB]) {
#pragma unroll
    for (int b = 0; b < NB; b++) {
        if (b >= n) break;
        float xr[WT::E];
        load_x<WT::E>(xg, xs, kx, k, smem, vec, b, c, xr);
#pragma unroll
        for (int j = 0; j < R; j++) {
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < WT::E; e++) d = fmaf(wf[j][e], xr[e], d);
            acc[j][b] = WT::combine(acc[j][b], d, sc[j]);
        }
    }
}

// The weight row of slot j of a warp's R rows starting at output o0, or -1
// past the end. SwiGLU (mode 2): slots < R/2 are gate rows, the rest the
// matching up rows (rows_out further down).
template <int R>
__device__ __forceinline__ int gemv_row(int j, int o0, int rows_out, int mode) {
    if (mode == 2) {
        int o = o0 + (j < R / 2 ? j : j - R / 2);
        return o < rows_out ? (j < R / 2 ? o : rows_out + o) : -1;
    }
    int o = o0 + j;
    return o < rows_out ? o : -1;
}

// Reduce a warp's sums and write its outputs (o0 = its first output row).
template <int NB, int R>
__device__ __forceinline__ void gemv_finish(float (&acc)[R][NB], float* __restrict__ y, int o0, int rows_out, int m,
                                            int n, int mode, int lane) {
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[j][b] = warp_sum(acc[j][b]);
    if (lane == 0) {
        if (mode == 2) {
#pragma unroll
            for (int j = 0; j < R / 2; j++)
#pragma unroll
                for (int b = 0; b < NB; b++)
                    if (o0 + j < rows_out && b < n)
                        y[(size_t)b * rows_out + o0 + j] = silu_mul(acc[j][b], acc[j + R / 2][b]);
        } else {
#pragma unroll
            for (int j = 0; j < R; j++)
#pragma unroll
                for (int b = 0; b < NB; b++)
                    if (o0 + j < m && b < n) {
                        size_t i = (size_t)b * m + o0 + j;
                        y[i] = mode == 1 ? y[i] + acc[j][b] : acc[j][b];
                    }
        }
    }
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[j][b] = 0.f;
}

#define GEMV_PARAMS                                                                                              \
    const int4 *__restrict__ w, const float *__restrict__ scales, const float *__restrict__ x,                  \
        const float *__restrict__ nw, float eps, float *__restrict__ x_out, float *__restrict__ y, int m, int k, \
        int kc, int gpr, int gshift, int n, int mode, int x_smem
#define GEMV_ARGS w, scales, x, nw, eps, x_out, y, m, k, kc, gpr, gshift, n, mode, x_smem

// ---------------------------------------------------------------- v2: software-pipelined warps

// Each warp owns groups of R weight rows (strided over the grid) and streams
// them U chunks per lane per step, loading the next step's weights and scales
// into registers before computing the current one, so loads stay in flight
// continuously. The first step is loaded before grid_dep_wait (weights never
// change during a run), overlapping the previous kernel's tail.
template <class WT, int R, int U>
__device__ __forceinline__ void v2_load(const int4* __restrict__ w, const float* __restrict__ scales, int g, int s,
                                        int groups, int per, int rows_out, int mode, int kc, int gpr, int gshift,
                                        int lane, int4 (&wv)[U][R], float (&sc)[U][R]) {
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int j = 0; j < R; j++) {
            int ch = s * WARP * U + u * WARP + lane;
            int row = g < groups ? gemv_row<R>(j, g * per, rows_out, mode) : -1;
            bool ok = row >= 0 && ch < kc;
            wv[u][j] = ok ? ld_stream(w + (size_t)row * kc + ch) : make_int4(0, 0, 0, 0);
            sc[u][j] = (WT::QUANT && ok) ? __ldg(scales + (size_t)row * gpr + ((ch * WT::E) >> gshift)) : 0.f;
        }
}

template <class WT, int NB, int R, int U>
__device__ __forceinline__ void gemv_v2(GEMV_PARAMS) {
    extern __shared__ __align__(16) float v2_xs[];
    __shared__ float red[BLOCK / WARP];
    constexpr int E = WT::E;
    constexpr int KX = E < 16 ? 16 : E; // staged rows cover whole chunks
    const int lane = threadIdx.x & (WARP - 1);
    const int rows_out = mode == 2 ? m / 2 : m;
    const int per = mode == 2 ? R / 2 : R;
    const int groups = (rows_out + per - 1) / per;
    const int steps = (kc + WARP * U - 1) / (WARP * U);
    const int gstride = gridDim.x * (BLOCK / WARP);
    int g = blockIdx.x * (BLOCK / WARP) + threadIdx.x / WARP;
    int s = 0;
    int4 cur[U][R];
    float cs[U][R];
    v2_load<WT, R, U>(w, scales, g, s, groups, per, rows_out, mode, kc, gpr, gshift, lane, cur, cs);
    if (nw != nullptr) prefetch_l1(nw, k * (int)sizeof(float));
    grid_dep_wait();
    const bool smem = x_smem != 0;
    const int kx = (k + KX - 1) & ~(KX - 1);
    if (smem) stage_x(x, n, k, kx, nw, eps, x_out, v2_xs, red);
    grid_dep_launch();
    if (g >= groups) return;
    const bool vec = (k & 3) == 0;
    float acc[R][NB];
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[j][b] = 0.f;
    for (;;) {
        int ng = g, ns = s + 1;
        if (ns == steps) {
            ns = 0;
            ng += gstride;
        }
        int4 nxt[U][R];
        float nsc[U][R];
        v2_load<WT, R, U>(w, scales, ng, ns, groups, per, rows_out, mode, kc, gpr, gshift, lane, nxt, nsc);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int ch = s * WARP * U + u * WARP + lane;
            if (ch < kc) {
                float wf[R][E];
#pragma unroll
                for (int j = 0; j < R; j++) WT::decode(cur[u][j], wf[j]);
                chunk_fma<WT, NB, R>(wf, cs[u], x, v2_xs, kx, k, smem, vec, n, ch * E, acc);
            }
        }
        if (s == steps - 1) gemv_finish<NB, R>(acc, y, g * per, rows_out, m, n, mode, lane);
        if (ng >= groups) break;
        g = ng;
        s = ns;
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int j = 0; j < R; j++) {
                cur[u][j] = nxt[u][j];
                cs[u][j] = nsc[u][j];
            }
    }
}

// ---------------------------------------------------------------- v3: cp.async ring through shared memory

// Each block streams tiles of TR = 8*R weight rows (strided over the grid)
// through an S-stage ring in shared memory, 512 bytes of every row per stage,
// with cp.async: S-1 stages are always in flight, independent of registers.
// The first S-1 stages are issued before grid_dep_wait. Warp w computes R
// rows of each stage, lane l the row's chunk l of the stage.
#define V3_CPS 32 // 16-byte chunks per row per stage

template <class WT, int R>
__device__ __forceinline__ int v3_row(int lr, int o0, int rows_out, int m, int mode) {
    constexpr int TR = (BLOCK / WARP) * R;
    if (mode == 2) {
        int o = o0 + (lr < TR / 2 ? lr : lr - TR / 2);
        return o < rows_out ? (lr < TR / 2 ? o : rows_out + o) : -1;
    }
    int o = o0 + lr;
    return o < m ? o : -1;
}

template <class WT, int NB, int R, int S>
__device__ __forceinline__ void gemv_v3(GEMV_PARAMS) {
    extern __shared__ __align__(16) int4 v3_ring[];
    __shared__ float red[BLOCK / WARP];
    constexpr int E = WT::E;
    constexpr int KX = E < 16 ? 16 : E;
    constexpr bool I8 = WT::QUANT;
    constexpr int TR = (BLOCK / WARP) * R;
    const int ngs = I8 ? (V3_CPS * E) >> gshift : 0; // scales per row per stage
    float* sring = (float*)(v3_ring + S * TR * V3_CPS);
    float* xs = sring + S * TR * ngs;
    const int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP;
    const int rows_out = mode == 2 ? m / 2 : m;
    const int per = mode == 2 ? TR / 2 : TR;
    const int tiles = (rows_out + per - 1) / per;
    const int ks_n = (kc + V3_CPS - 1) / V3_CPS;
    const int my_tiles = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
    const int T = my_tiles * ks_n;

    auto issue = [&](int t) {
        int tile = blockIdx.x + (t / ks_n) * gridDim.x, ks = t % ks_n, slot = t % S;
        int o0 = tile * per;
        int4* dst = v3_ring + slot * TR * V3_CPS;
        for (int idx = threadIdx.x; idx < TR * V3_CPS; idx += BLOCK) {
            int lr = idx / V3_CPS, ch = ks * V3_CPS + idx % V3_CPS;
            int row = v3_row<WT, R>(lr, o0, rows_out, m, mode);
            bool ok = row >= 0 && ch < kc;
            cp_async16(dst + idx, ok ? (const void*)(w + (size_t)row * kc + ch) : (const void*)w, ok);
        }
        if constexpr (I8) {
            float* sdst = sring + slot * TR * ngs;
            int s0 = (ks * V3_CPS * E) >> gshift;
            for (int idx = threadIdx.x; idx < TR * ngs; idx += BLOCK) {
                int lr = idx / ngs, gi = s0 + idx % ngs;
                int row = v3_row<WT, R>(lr, o0, rows_out, m, mode);
                bool ok = row >= 0 && gi < gpr;
                cp_async4(sdst + idx, ok ? (const void*)(scales + (size_t)row * gpr + gi) : (const void*)scales, ok);
            }
        }
    };

#pragma unroll 1
    for (int t = 0; t < S - 1; t++) {
        if (t < T) issue(t);
        cp_async_commit();
    }
    if (nw != nullptr) prefetch_l1(nw, k * (int)sizeof(float));
    grid_dep_wait();
    const bool smem = x_smem != 0;
    const int kx = (k + KX - 1) & ~(KX - 1);
    if (smem) stage_x(x, n, k, kx, nw, eps, x_out, xs, red);
    grid_dep_launch();
    const bool vec = (k & 3) == 0;
    // The warp's R local rows: gate rows then up rows for SwiGLU.
    int lrow[R];
#pragma unroll
    for (int j = 0; j < R; j++)
        lrow[j] = mode == 2 ? (j < R / 2 ? warp * (R / 2) + j : TR / 2 + warp * (R / 2) + j - R / 2) : warp * R + j;
    const int wper = mode == 2 ? R / 2 : R;
    float acc[R][NB];
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[j][b] = 0.f;
#pragma unroll 1
    for (int t = 0; t < T; t++) {
        cp_async_wait<S - 2>();
        __syncthreads();
        if (t + S - 1 < T) issue(t + S - 1);
        cp_async_commit();
        int ks = t % ks_n, slot = t % S;
        int ch = ks * V3_CPS + lane;
        if (ch < kc) {
            const int4* src = v3_ring + slot * TR * V3_CPS;
            const float* ssrc = sring + slot * TR * ngs;
            float wf[R][E], sc[R];
#pragma unroll
            for (int j = 0; j < R; j++) {
                WT::decode(src[lrow[j] * V3_CPS + lane], wf[j]);
                sc[j] = I8 ? ssrc[lrow[j] * ngs + ((lane * E) >> gshift)] : 0.f;
            }
            chunk_fma<WT, NB, R>(wf, sc, x, xs, kx, k, smem, vec, n, ch * E, acc);
        }
        if (ks == ks_n - 1) {
            int tile = blockIdx.x + (t / ks_n) * gridDim.x;
            gemv_finish<NB, R>(acc, y, tile * per + warp * wper, rows_out, m, n, mode, lane);
        }
    }
    cp_async_wait<0>();
}

// ---------------------------------------------------------------- v4: v2 for one activation row, lean

// The work split and summation order of v2 with n = 1 (so v4 gives v2's bits),
// with the bookkeeping moved out of the inner loop, which made v2's int8
// kernel issue-bound (docs/gpu.md, run 3: 8.6 instructions per weight):
// - a warp's R row pointers (and scale-row pointers) are computed once per row
//   group, with the lane's first chunk folded in; a step's loads are those
//   pointers plus a warp-uniform step offset and a constant per chunk;
//   rows past the end read the group's first row (valid memory) and are dropped
//   by gemv_finish, so only a ragged last step needs predicates;
// - the lane's staged-activation offsets are fixed per lane: with chunk
//   ch = base + lane and base a multiple of 32, swz4(F*ch + f) = F*base +
//   swz4(F*lane + f) (F = float4s per chunk), so one set of F offsets serves
//   every chunk;
// - two register buffers alternate (the loop body is written twice), so the
//   prefetched step is never copied;
// - full steps and the ragged last step are separate code behind a
//   warp-uniform branch (template FULL), and scale offsets are constants
//   (groups of 32): a full step's loads carry no predicates or per-chunk
//   address arithmetic. With one runtime flag ptxas had merged both cases into
//   predicated loads and a branch per chunk. Loads + compute of a full int8
//   step, SASS instructions (ptxas 13.0, sm_90; scripts/sass-gemv.sh):
//   2 rows x 4 chunks 662 -> 495 (5.2 -> 3.9 per weight), 4 rows x 2 chunks
//   591 -> ~508 (4.6 -> 4.0); registers 121 -> 127 (still 2 blocks per SM)
//   and 157 -> 128 (bounded: 1 -> 2 blocks per SM, see its entry). int4 2 x 2
//   went from 80 to 91 registers (3 to 2 blocks per SM; bounding it to 3
//   blocks spills): the autotuner's v2-or-v4 timing decides there.
//   docs/gpu.md, "GEMV v4, full steps".
// Needs the activations staged in shared memory (x_smem); the launcher runs v2
// (same bits) otherwise.
// Pointers of group g's rows, lane's first chunk and scale folded in.
template <class WT, int R>
__device__ __forceinline__ void v4_rows(const int4* __restrict__ w, const float* __restrict__ scales, int g, int per,
                                        int rows_out, int mode, int kc, int gpr, int lane_sc, int lane,
                                        const int4* (&wp)[R], const float* (&sp)[R]) {
#pragma unroll
    for (int j = 0; j < R; j++) {
        int row = gemv_row<R>(j, g * per, rows_out, mode);
        if (row < 0) row = gemv_row<R>(0, g * per, rows_out, mode); // dropped by gemv_finish
        wp[j] = w + (size_t)row * kc + lane;
        sp[j] = WT::QUANT ? scales + (size_t)row * gpr + lane_sc : nullptr;
    }
}

// Step s's weights and scales (chunks s*WARP*U + u*WARP + lane). FULL: every
// chunk of the step exists (no predicates), else chunks at or past kc read
// nothing. Scale groups are 2^V4_GSHIFT = 32 inputs, so per-chunk scale
// offsets are constants.
#define V4_GSHIFT 5 // log2 of the int8/int4 scale group; gemv.rs asserts INT8_GROUP == 32
template <class WT, int R, int U, bool FULL>
__device__ __forceinline__ void v4_load(const int4* const (&wp)[R], const float* const (&sp)[R], int s, int kc,
                                        int lane, int4 (&wv)[U][R], float (&sc)[U][R]) {
    const int cb = s * WARP * U; // warp-uniform first chunk of the step
    const int scb = (cb * WT::E) >> V4_GSHIFT;
    constexpr int sstep = (WARP * WT::E) >> V4_GSHIFT; // scales per WARP chunks
#pragma unroll
    for (int j = 0; j < R; j++) {
        const int4* q = wp[j] + cb; // then constant offsets per u
        const float* sq = WT::QUANT ? sp[j] + scb : nullptr;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const bool ok = FULL || cb + u * WARP + lane < kc;
            wv[u][j] = ok ? ld_stream(q + u * WARP) : make_int4(0, 0, 0, 0);
            sc[u][j] = (WT::QUANT && ok) ? __ldg(sq + u * sstep) : 0.f;
        }
    }
}

// acc[j] += step s of row j, in v2's order (chunk by chunk, u ascending).
// xo[f]: the lane's swizzled float4 offsets into the staged activations.
template <class WT, int R, int U, bool FULL>
__device__ __forceinline__ void v4_compute(const int4 (&wv)[U][R], const float (&sc)[U][R], const float4* xs4,
                                           const int (&xo)[WT::E / 4], int s, int kc, int lane, float (&acc)[R][1]) {
    constexpr int F = WT::E / 4;
    const int cb = s * WARP * U;
    const float4* xb = xs4 + F * cb; // warp-uniform; then constant offsets per u
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (FULL || cb + u * WARP + lane < kc) {
            float xr[WT::E];
#pragma unroll
            for (int f = 0; f < F; f++) {
                float4 v = xb[xo[f] + F * u * WARP];
                xr[4 * f] = v.x;
                xr[4 * f + 1] = v.y;
                xr[4 * f + 2] = v.z;
                xr[4 * f + 3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < R; j++) {
                float wf[WT::E];
                WT::decode(wv[u][j], wf);
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < WT::E; e++) d = fmaf(wf[e], xr[e], d);
                acc[j][0] = WT::combine(acc[j][0], d, sc[u][j]);
            }
        }
    }
}

// Advance (g, s) to the next item (ng, ns) and load it into the buffer given,
// with the next group's pointers when the group changes (the step still to
// compute needs only its buffer). ng >= groups: no next item. Used by the
// loops of v4 and v5 (GEMV_V4_LOOP), over their locals.
#define V4_NEXT_LOAD(WT, BUF, BS)                                                                            \
    {                                                                                                        \
        ng = g;                                                                                              \
        ns = s + 1;                                                                                          \
        if (ns == steps) {                                                                                   \
            ns = 0;                                                                                          \
            ng += gstride;                                                                                   \
            if (ng < groups) v4_rows<WT, R>(w, scales, ng, per, rows_out, mode, kc, gpr, lane_sc, lane, wp, sp); \
        }                                                                                                    \
        if (ns < full_steps) {                                                                               \
            if (ng < groups) v4_load<WT, R, U, true>(wp, sp, ns, kc, lane, BUF, BS);                         \
        } else if (ng < groups) {                                                                            \
            v4_load<WT, R, U, false>(wp, sp, ns, kc, lane, BUF, BS);                                         \
        }                                                                                                    \
    }
// The locals of v4's and v5's loops (GEMV_V4_LOOP) and the first step's
// loads into buffer a, issued before grid_dep_wait: weights never change
// during a run.
#define GEMV_V4_SETUP(WT)                                                                                    \
    const int lane = threadIdx.x & (WARP - 1);                                                               \
    const int rows_out = mode == 2 ? m / 2 : m;                                                              \
    const int per = mode == 2 ? R / 2 : R;                                                                   \
    const int groups = (rows_out + per - 1) / per;                                                           \
    const int steps = (kc + WARP * U - 1) / (WARP * U);                                                      \
    const int full_steps = kc / (WARP * U); /* steps < full_steps have every chunk */                        \
    const int gstride = gridDim.x * (BLOCK / WARP);                                                          \
    const int lane_sc = (lane * WT::E) >> V4_GSHIFT;                                                         \
    int g = blockIdx.x * (BLOCK / WARP) + threadIdx.x / WARP;                                                \
    int s = 0;                                                                                               \
    const int4* wp[R];                                                                                       \
    const float* sp[R];                                                                                      \
    int4 a[U][R], b[U][R];                                                                                   \
    float as[U][R], bs[U][R];                                                                                \
    if (g < groups) {                                                                                        \
        v4_rows<WT, R>(w, scales, g, per, rows_out, mode, kc, gpr, lane_sc, lane, wp, sp);                   \
        if (full_steps > 0)                                                                                  \
            v4_load<WT, R, U, true>(wp, sp, 0, kc, lane, a, as);                                             \
        else                                                                                                 \
            v4_load<WT, R, U, false>(wp, sp, 0, kc, lane, a, as);                                            \
    }
// The two register buffers a and b alternate: load the next item into one
// while the other is computed (COMPUTE(BUF, BS) also finishes a group).
#define GEMV_V4_LOOP(WT, COMPUTE)                                                                            \
    int ng, ns;                                                                                              \
    for (;;) {                                                                                               \
        V4_NEXT_LOAD(WT, b, bs)                                                                              \
        COMPUTE(a, as)                                                                                       \
        if (ng >= groups) break;                                                                             \
        g = ng;                                                                                              \
        s = ns;                                                                                              \
        V4_NEXT_LOAD(WT, a, as)                                                                              \
        COMPUTE(b, bs)                                                                                       \
        if (ng >= groups) break;                                                                             \
        g = ng;                                                                                              \
        s = ns;                                                                                              \
    }

template <class WT, int R, int U>
__device__ __forceinline__ void gemv_v4(GEMV_PARAMS) {
    extern __shared__ __align__(16) float v4_xs[];
    __shared__ float red[BLOCK / WARP];
    constexpr int E = WT::E;
    constexpr int F = E / 4;
    constexpr int KX = E < 16 ? 16 : E;
    GEMV_V4_SETUP(WT)
    if (nw != nullptr) prefetch_l1(nw, k * (int)sizeof(float));
    grid_dep_wait();
    const int kx = (k + KX - 1) & ~(KX - 1);
    stage_x(x, 1, k, kx, nw, eps, x_out, v4_xs, red);
    grid_dep_launch();
    if (g >= groups) return;
    const float4* xs4 = (const float4*)v4_xs;
    int xo[F];
#pragma unroll
    for (int f = 0; f < F; f++) xo[f] = swz4(F * lane + f);
    float acc[R][1];
#pragma unroll
    for (int j = 0; j < R; j++) acc[j][0] = 0.f;
#define V4_COMPUTE(BUF, BS)                                                                                  \
    {                                                                                                        \
        if (s < full_steps)                                                                                  \
            v4_compute<WT, R, U, true>(BUF, BS, xs4, xo, s, kc, lane, acc);                                  \
        else                                                                                                 \
            v4_compute<WT, R, U, false>(BUF, BS, xs4, xo, s, kc, lane, acc);                                 \
        if (s == steps - 1) gemv_finish<1, R>(acc, y, g * per, rows_out, m, 1, mode, lane); /* zeroes acc */ \
    }
    GEMV_V4_LOOP(WT, V4_COMPUTE)
#undef V4_COMPUTE
}

// ---------------------------------------------------------------- v5: int8 weights x fixed-point activations (dp4a)
//
// One activation row, int8 weights only; opt-in (TESSERA_INT8_DECODE=dp4a or
// TESSERA_GEMV=v5), since its numerics differ from v1-v4 in the last bits.
// v4's int8 loop spends 3 instructions per weight converting it to f32 and
// multiplying (PRMT, FADD, FFMA). Here the activations are converted once per
// block instead: while staging, every 16-element chunk c of x is written as
//     x[e] ~= s_c * q[e],  q[e] = hi[e] * 2^16 + mid[e] * 2^8 + lo[e],
// with s_c = 2^(E_c - 21) for the chunk's largest |x| in [2^E_c, 2^(E_c+1))
// (so |q| <= 2^22 and |x - s_c q| <= |x|max * 2^-22): lo and mid are bytes 0
// and 1 of q (unsigned), hi its byte 2 (signed). A chunk's product with a
// weight chunk is then three integer dot products of 16 byte pairs (12 dp4a,
// exact), combined once in f32:
//     d = fmaf(float(dh), 65536, float(dm * 256 + dl)) * s_c,
//     acc = fmaf(scale, d, acc),
// about 1.2 instructions per weight. Chunks are summed in v4's order (lane l
// owns chunks l, l+32, ...), so fusion, recording and the grid never change
// a bit; only the choice between v5 and the other variants does. Chunks whose
// largest |x| is below 2^-100 count as zero; a chunk holding a NaN or an
// infinity makes every output NaN.
//
// Shared memory: three planes of kc 16-byte words (lo, mid, hi; chunk c's 16
// bytes at word c of each plane, element e in byte e), then kc f32 s_c. A lane
// reads consecutive 16-byte words of each plane: no bank conflicts.

// c + the dot product of the four bytes of a and of b: signed x signed
// (dp4a_ss) or signed x unsigned (dp4a_su).
__device__ __forceinline__ int dp4a_ss(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
#pragma unroll
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    return c;
#endif
}
__device__ __forceinline__ int dp4a_su(int a, int b, int c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610
    int d;
    asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
#pragma unroll
    for (int i = 0; i < 4; i++) c += (int)(signed char)(a >> (8 * i)) * (int)(unsigned char)(b >> (8 * i));
    return c;
#endif
}

// N activations (16 for v5's chunks, 32 for v6's groups) as three limb
// planes of N/4 words each (lo, mid, hi: bytes 0, 1 and 2 of each element's
// q, element e at byte e % 4 of word e / 4) and their scale s. q is the
// two's complement integer, so q = hi * 2^16 + mid * 2^8 + lo with lo, mid
// unsigned and hi signed (|hi| <= 64). About 6 instructions per element.
template <int N>
__device__ __forceinline__ void fx_quantize(const float (&v)[N], int (&w)[3][N / 4], float& s) {
    // The largest |x| as bits: integer order is float order for |x|, and a
    // NaN (above every infinity) cannot hide, as it would from fmaxf.
    int mb = 0;
#pragma unroll
    for (int e = 0; e < N; e++) mb = max(mb, __float_as_int(v[e]) & 0x7FFFFFFF);
    if (mb >= 0x7F800000 || mb < 0x0D800000) {
        // A NaN or an infinity: NaN out. Below 2^-100: counts as zero.
        s = mb >= 0x7F800000 ? __int_as_float(0x7fc00000) : 0.f;
#pragma unroll
        for (int i = 0; i < N / 4; i++) w[0][i] = w[1][i] = w[2][i] = 0;
        return;
    }
    const int sh = 21 - ((mb >> 23) - 127); // largest |x| in [2^(21-sh), 2^(22-sh)); sh in [-106, 121]
    const float up = __int_as_float((127 + sh) << 23);
    s = __int_as_float((127 - sh) << 23);
    int q[N];
#pragma unroll
    for (int e = 0; e < N; e++) {
        // |x * up| < 2^22: adding 1.5 * 2^23 rounds it to an integer (to
        // nearest even) held in the low mantissa bits: bits = 0x4B400000 + q.
        q[e] = __float_as_int(fmaf(v[e], up, 12582912.0f)) - 0x4B400000;
    }
#pragma unroll
    for (int i = 0; i < N / 4; i++) {
        // Transpose the bytes of q[4i .. 4i+3].
        const unsigned lo01 = __byte_perm(q[4 * i], q[4 * i + 1], 0x5140);     // q0.b0 q1.b0 q0.b1 q1.b1
        const unsigned hi01 = __byte_perm(q[4 * i], q[4 * i + 1], 0x7362);     // q0.b2 q1.b2 q0.b3 q1.b3
        const unsigned lo23 = __byte_perm(q[4 * i + 2], q[4 * i + 3], 0x5140);
        const unsigned hi23 = __byte_perm(q[4 * i + 2], q[4 * i + 3], 0x7362);
        w[0][i] = (int)__byte_perm(lo01, lo23, 0x5410); // byte 0 of q0..q3
        w[1][i] = (int)__byte_perm(lo01, lo23, 0x7632); // byte 1
        w[2][i] = (int)__byte_perm(hi01, hi23, 0x5410); // byte 2
    }
}

// One chunk of 16 activations as its three limb words and the chunk's scale.
__device__ __forceinline__ void v5_quantize(const float (&v)[16], int4 (&limb)[3], float& s) {
    int w[3][4];
    fx_quantize<16>(v, w, s);
#pragma unroll
    for (int p = 0; p < 3; p++) limb[p] = make_int4(w[p][0], w[p][1], w[p][2], w[p][3]);
}

// Stage the activation row as limb planes and chunk scales (layout above),
// applying RMSNorm when nw is set (the values stage_x would hold); block 0
// also writes the normalized row to x_out. Ends with a barrier.
__device__ __forceinline__ void v5_stage_x(const float* __restrict__ x, int k, int kc,
                                           const float* __restrict__ nw, float eps, float* __restrict__ x_out,
                                           int4* planes, float* red) {
    const bool out = x_out != nullptr && blockIdx.x == 0;
    const float inv = nw ? block_inv_rms(x, k, eps, red) : 1.f;
    float* sc = (float*)(planes + 3 * kc);
    for (int c = threadIdx.x; c < kc; c += BLOCK) {
        float v[16];
        if ((k & 3) == 0) {
#pragma unroll
            for (int f = 0; f < 4; f++) {
                const int i = 4 * c + f; // float4 index; k is a multiple of 4
                float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
                if (4 * i < k) {
                    t = ((const float4*)x)[i];
                    if (nw) {
                        float4 g = ((const float4*)nw)[i];
                        t = make_float4(norm_elem(t.x, g.x, inv), norm_elem(t.y, g.y, inv),
                                        norm_elem(t.z, g.z, inv), norm_elem(t.w, g.w, inv));
                    }
                    if (out) ((float4*)x_out)[i] = t;
                }
                v[4 * f] = t.x;
                v[4 * f + 1] = t.y;
                v[4 * f + 2] = t.z;
                v[4 * f + 3] = t.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < 16; e++) {
                const int i = 16 * c + e;
                float t = i < k ? (nw ? norm_elem(x[i], nw[i], inv) : x[i]) : 0.f;
                if (out && i < k) x_out[i] = t;
                v[e] = t;
            }
        }
        int4 limb[3];
        float s;
        v5_quantize(v, limb, s);
        planes[c] = limb[0];
        planes[kc + c] = limb[1];
        planes[2 * kc + c] = limb[2];
        sc[c] = s;
    }
    __syncthreads();
}

// acc[j] += step s of row j (chunks cb + u*WARP + lane, u ascending).
// pl: the planes offset by the lane; scl: the chunk scales offset by the lane.
template <int R, int U, bool FULL>
__device__ __forceinline__ void v5_compute(const int4 (&wv)[U][R], const float (&sc)[U][R], const int4* pl,
                                           const float* scl, int kc, int s, int lane, float (&acc)[R][1]) {
    const int cb = s * WARP * U;
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (FULL || cb + u * WARP + lane < kc) {
            const int c = cb + u * WARP; // warp-uniform; the lane's offset is in pl / scl
            const int4 lo = pl[c], mid = pl[kc + c], hi = pl[2 * kc + c];
            const float sx = scl[c];
#pragma unroll
            for (int j = 0; j < R; j++) {
                const int4 q = wv[u][j];
                int dl = dp4a_su(q.x, lo.x, 0), dm = dp4a_su(q.x, mid.x, 0), dh = dp4a_ss(q.x, hi.x, 0);
                dl = dp4a_su(q.y, lo.y, dl);
                dm = dp4a_su(q.y, mid.y, dm);
                dh = dp4a_ss(q.y, hi.y, dh);
                dl = dp4a_su(q.z, lo.z, dl);
                dm = dp4a_su(q.z, mid.z, dm);
                dh = dp4a_ss(q.z, hi.z, dh);
                dl = dp4a_su(q.w, lo.w, dl);
                dm = dp4a_su(q.w, mid.w, dm);
                dh = dp4a_ss(q.w, hi.w, dh);
                // |dm|, |dl| <= 16 * 128 * 255, so dm * 256 + dl fits an int.
                const float d = __fmul_rn(fmaf((float)dh, 65536.f, (float)(dm * 256 + dl)), sx);
                acc[j][0] = fmaf(sc[u][j], d, acc[j][0]);
            }
        }
    }
}

// v4's loop (rows, full and ragged steps, two alternating register buffers,
// first step loaded before grid_dep_wait) around v5_compute.
template <int R, int U>
__device__ __forceinline__ void gemv_v5(GEMV_PARAMS) {
    extern __shared__ __align__(16) int4 v5_xs[];
    __shared__ float red[BLOCK / WARP];
    GEMV_V4_SETUP(WInt8)
    if (nw != nullptr) prefetch_l1(nw, k * (int)sizeof(float));
    grid_dep_wait();
    v5_stage_x(x, k, kc, nw, eps, x_out, v5_xs, red);
    grid_dep_launch();
    if (g >= groups) return;
    const int4* pl = v5_xs + lane;
    const float* scl = (const float*)(v5_xs + 3 * kc) + lane;
    float acc[R][1];
#pragma unroll
    for (int j = 0; j < R; j++) acc[j][0] = 0.f;
#define V5_COMPUTE(BUF, BS)                                                                                  \
    {                                                                                                        \
        if (s < full_steps)                                                                                  \
            v5_compute<R, U, true>(BUF, BS, pl, scl, kc, s, lane, acc);                                      \
        else                                                                                                 \
            v5_compute<R, U, false>(BUF, BS, pl, scl, kc, s, lane, acc);                                     \
        if (s == steps - 1) gemv_finish<1, R>(acc, y, g * per, rows_out, m, 1, mode, lane); /* zeroes acc */ \
    }
    GEMV_V4_LOOP(WInt8, V5_COMPUTE)
#undef V5_COMPUTE
}

// ---------------------------------------------------------------- v6: int8/int4 weights x fixed-point activations on tensor cores (2-64 rows)
//
// Int8 or int4 weights, up to 16 activation rows (decode of a batch) and, for
// prefill, 64 rows per launch; opt-in with v5 (TESSERA_INT8_DECODE=dp4a adds
// it to the timing of 2..16-row shapes and runs every larger int8/int4
// product on it, TESSERA_GEMV=v6 forces it). The f32 variants run 16 rows at 6-7% of the
// copy rate (H200, run 7): every weight is converted and multiplied once per
// activation row on CUDA cores, with the activations re-read from shared
// memory for every weight row. Here:
// 1. gemv_v6_quantize writes each activation row (RMSNorm fused) as 22-bit
//    fixed point per 32-input group G, the weights' scale group:
//    x[e] ~= s_G * q[e], q as three byte planes (fx_quantize, as v5 but over
//    32 inputs), into a scratch buffer `xq`.
// 2. One warp multiplies 16 weight rows by one group of 8 activation rows
//    as three integer tensor-core products (mma m16n8k32: s8 weights x u8
//    lo / u8 mid / s8 hi limbs, exact s32 sums) and combines them once per
//    group in f32:
//        d = fmaf(dh, 65536, fmaf(dm, 256, dl)),  acc = fmaf(scale * s_G, d, acc).
//    The products start from the bit pattern of 1.5 * 2^23, so each s32
//    result read as f32 is 1.5 * 2^23 + its dot product exactly (|dot| <=
//    32 * 128 * 255 < 2^22): no integer-to-float conversions.
// The weights are read straight from global memory, 8 bytes per lane, and
// used as they are (int4: 4 bytes per lane, unpacked to bytes, v6_unpack_i4).
//
// Fragments of mma.m16n8k32 with 8-bit types (PTX ISA; g = lane / 4, t = lane % 4):
//   A (16 x 32, row): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32 x 8, col):  b0 = B[4t..4t+3][g], b1 = B[16+4t..][g]
//   C (16 x 8):       c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// An integer dot product does not depend on the order of its terms, so
// logical k = 4t+j is fed from input 8t+j of the group and k = 16+4t+j from
// 8t+4+j: lane (g, t) takes a0/a2 from one 8-byte load at byte 8t of weight
// row g's group, and b0/b1 from one 8-byte load at the same offset of
// activation row g's limb plane. A quad reads one whole 32-byte sector.
//
// Work split: a block is 8 warps = 8 tiles of 16 weight rows (SwiGLU: 4
// tiles of gate rows and the 4 matching tiles of up rows), and blockIdx.y one
// of S slices of `gps` groups (split-K, so that a 4096-row product still
// fills the GPU). The block stages its slice of xq in shared memory (in
// stages of gst groups when 32 or 64 activation rows leave too little room). With
// S > 1 each block writes its sums to `part`, and the last of a row tile's S
// blocks (arrival counter, left at zero) adds them in slice order and applies
// the epilogue. The result depends on S, which the host derives from the
// shape and the SM count only, so recorded and eager steps agree; it is not
// bit-identical to v1-v5.
//
// xq layout for NB activation slots (8, 16, 32 or 64; slots >= n are zero):
// group G, plane p (lo, mid, hi), slot b: 32 bytes at ((G * 3 + p) * NB + b)
// * 32 (element e at byte e; for int4 weights each 8-element span holds its
// even elements, then its odd ones); then the f32 scales s_G of slot b at
// [G * NB + b].
//
// Bf16 weights (TESSERA_BF16_DECODE=tc): no fixed point. Each activation is
// split into three bf16, x = hi + mid + lo exactly, and the products run as
// bf16 tensor-core products with f32 accumulation (mma m16n8k16, six per
// group and tile: three pieces x two halves of 16 inputs, smallest piece
// first, from zero), then one f32 add per group: no scales. A lane
// loads 16 bytes (8 weights) of each of its two rows per group and 16 bytes
// of each piece; by the same freedom of order, logical k = 2t, 2t+1 and
// 8+2t, 8+2t+1 of the first product are inputs 8t..8t+3, of the second
// 8t+4..8t+7. xq for bf16: group G, piece p (hi, mid, lo), slot b: 64 bytes
// at ((G * 3 + p) * NB + b) * 64 (element e at bytes 2e, 2e+1).
#define V6_GROUP 32
// Weight formats (the quantizer's `fmt`, gemv_v6's FMT).
#define V6_I8 0
#define V6_I4 1
#define V6_BF16 2

// Quantize n activation rows (RMSNorm fused when nw is set; the normalized
// rows also go to x_out) into xq. Grid (ceil(groups / BLOCK), nb), one thread
// per (group, slot).
extern "C" __global__ void __launch_bounds__(BLOCK)
    gemv_v6_quantize(const float* __restrict__ x, const float* __restrict__ nw, float eps,
                     float* __restrict__ x_out, int k, int n, int nb, int groups, int fmt, int4* __restrict__ xq) {
    __shared__ float red[BLOCK / WARP];
    KERNEL_PROLOGUE();
    const int b = blockIdx.y;
    const float* xr = x + (size_t)b * k;
    const float inv = (nw != nullptr && b < n) ? block_inv_rms(xr, k, eps, red) : 1.f;
    const int G = blockIdx.x * BLOCK + threadIdx.x;
    if (G >= groups) return;
    float v[V6_GROUP];
#pragma unroll
    for (int e = 0; e < V6_GROUP; e++) {
        const int i = G * V6_GROUP + e;
        float t = 0.f;
        if (b < n && i < k) {
            t = nw != nullptr ? norm_elem(xr[i], nw[i], inv) : xr[i];
            if (x_out != nullptr) x_out[(size_t)b * k + i] = t;
        }
        v[e] = t;
    }
    if (fmt == V6_BF16) {
        // bf16 weights: x = hi + mid + lo exactly (three bf16, each the
        // rounding of what the ones before leave), 64 bytes per piece.
        unsigned short pc[3][V6_GROUP];
#pragma unroll
        for (int e = 0; e < V6_GROUP; e++) {
            float r = v[e];
#pragma unroll
            for (int p = 0; p < 3; p++) {
                pc[p][e] = f32_to_bf16_bits(r);
                r = r - bf16_bits_to_f32(pc[p][e]);
            }
        }
#pragma unroll
        for (int p = 0; p < 3; p++) {
            int4* dst = xq + ((size_t)(G * 3 + p) * nb + b) * 4;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const unsigned short* h = pc[p] + 8 * j;
                dst[j] = make_int4((int)(h[0] | ((unsigned)h[1] << 16)), (int)(h[2] | ((unsigned)h[3] << 16)),
                                   (int)(h[4] | ((unsigned)h[5] << 16)), (int)(h[6] | ((unsigned)h[7] << 16)));
            }
        }
        return;
    }
    if (fmt == V6_I4) {
        // For int4 weights each 8-input span is stored even inputs first,
        // then odd ones: the order a lane's unpacked nibbles come in
        // (gemv_v6, I4).
        float t[V6_GROUP];
#pragma unroll
        for (int e = 0; e < V6_GROUP; e++) t[e] = v[e];
#pragma unroll
        for (int e = 0; e < V6_GROUP; e++) v[e] = t[(e & ~7) | ((e & 3) << 1) | ((e >> 2) & 1)];
    }
    int w[3][V6_GROUP / 4];
    float s;
    fx_quantize<V6_GROUP>(v, w, s);
#pragma unroll
    for (int p = 0; p < 3; p++) {
        int4* dst = xq + ((size_t)(G * 3 + p) * nb + b) * 2;
        dst[0] = make_int4(w[p][0], w[p][1], w[p][2], w[p][3]);
        dst[1] = make_int4(w[p][4], w[p][5], w[p][6], w[p][7]);
    }
    ((float*)(xq + (size_t)groups * 3 * nb * 2))[(size_t)G * nb + b] = s;
}

// d = A (16 x 32, s8) x B (32 x 8; u8, or s8 when SIGNED_B) + 1.5 * 2^23 as
// s32, in the fragments above. Off the GPU (the CPU emulator) and before
// sm_80, the same function from shuffles.
template <bool SIGNED_B>
__device__ __forceinline__ void v6_mma(int (&d)[4], const int (&a)[4], int b0, int b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (SIGNED_B)
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%10, %10, %10, %10};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0x4B400000));
    else
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%10, %10, %10, %10};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0x4B400000));
#else
    const int lane = threadIdx.x & (WARP - 1), g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++) d[i] = 0x4B400000;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        // Row g's k = 4q.. and 16+4q.. (a0, a2 of lane 4g+q), row g+8's (a1, a3).
        const int r0a = __shfl_sync(0xffffffffu, a[0], 4 * g + q), r0b = __shfl_sync(0xffffffffu, a[2], 4 * g + q);
        const int r1a = __shfl_sync(0xffffffffu, a[1], 4 * g + q), r1b = __shfl_sync(0xffffffffu, a[3], 4 * g + q);
#pragma unroll
        for (int j = 0; j < 2; j++) {
            // Column 2t+j's k = 4q.. and 16+4q.. (b0, b1 of lane 4(2t+j)+q).
            const int ca = __shfl_sync(0xffffffffu, b0, 4 * (2 * t + j) + q);
            const int cb = __shfl_sync(0xffffffffu, b1, 4 * (2 * t + j) + q);
            if (SIGNED_B) {
                d[j] = dp4a_ss(r0b, cb, dp4a_ss(r0a, ca, d[j]));
                d[2 + j] = dp4a_ss(r1b, cb, dp4a_ss(r1a, ca, d[2 + j]));
            } else {
                d[j] = dp4a_su(r0b, cb, dp4a_su(r0a, ca, d[j]));
                d[2 + j] = dp4a_su(r1b, cb, dp4a_su(r1a, ca, d[2 + j]));
            }
        }
    }
#endif
}

template <bool B, class T, class F>
struct v6_if {
    typedef T type;
};
template <class T, class F>
struct v6_if<false, T, F> {
    typedef F type;
};

// c += A (16 x 16, bf16) x B (16 x 8, bf16), f32 accumulation, in the
// fragments of mma.m16n8k16 (g = lane / 4, t = lane % 4): a0 = A[g][2t..2t+1],
// a1 = A[g+8][2t..], a2 = A[g][8+2t..], a3 = A[g+8][8+2t..] (two bf16 per
// register, the lower index in the low half); b0 = B[2t..2t+1][g], b1 =
// B[8+2t..][g]; c as in m16n8k32. Off the GPU and before sm_80: the same
// products from shuffles, summed in k order.
__device__ __forceinline__ void v6_mma_bf16(float (&c)[4], const int (&a)[4], int b0, int b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    const int lane = threadIdx.x & (WARP - 1), g = lane >> 2, t = lane & 3;
    float ar[2][16], bc[2][16];
#pragma unroll
    for (int q = 0; q < 4; q++) {
#pragma unroll
        for (int h = 0; h < 2; h++) { // h = 0: k 2q, 2q+1; h = 1: k 8+2q, 9+2q
            const int r0 = __shfl_sync(0xffffffffu, a[2 * h], 4 * g + q);
            const int r1 = __shfl_sync(0xffffffffu, a[2 * h + 1], 4 * g + q);
            const int kk = 8 * h + 2 * q;
            ar[0][kk] = bf16_bits_to_f32((unsigned short)(r0 & 0xFFFF));
            ar[0][kk + 1] = bf16_bits_to_f32((unsigned short)((unsigned)r0 >> 16));
            ar[1][kk] = bf16_bits_to_f32((unsigned short)(r1 & 0xFFFF));
            ar[1][kk + 1] = bf16_bits_to_f32((unsigned short)((unsigned)r1 >> 16));
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int cv = __shfl_sync(0xffffffffu, h ? b1 : b0, 4 * (2 * t + j) + q);
                bc[j][kk] = bf16_bits_to_f32((unsigned short)(cv & 0xFFFF));
                bc[j][kk + 1] = bf16_bits_to_f32((unsigned short)((unsigned)cv >> 16));
            }
        }
    }
#pragma unroll
    for (int kk = 0; kk < 16; kk++) {
        c[0] = fmaf(ar[0][kk], bc[0][kk], c[0]);
        c[1] = fmaf(ar[0][kk], bc[1][kk], c[1]);
        c[2] = fmaf(ar[1][kk], bc[0][kk], c[2]);
        c[3] = fmaf(ar[1][kk], bc[1][kk], c[3]);
    }
#endif
}

// 8 bytes of weights, not kept in L1 (each is read once).
__device__ __forceinline__ int2 ld_stream8(const signed char* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    int2 v;
    asm("ld.global.nc.L1::no_allocate.v2.s32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
#else
    return __ldg((const int2*)p);
#endif
}

// Groups whose weights are loaded ahead: 4 for up to 16 activation rows
// (decode: the loads are the work), 2 for 32 and 64 (prefill: each weight
// serves 4-8 tiles, and registers are short).
#define V6_U (NT >= 4 ? 2 : 4)

// 4 bytes of weights, not kept in L1.
__device__ __forceinline__ int ld_stream4(const signed char* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    int v;
    asm("ld.global.nc.L1::no_allocate.s32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
#else
    return __ldg((const int*)p);
#endif
}

// Eight int4 weights (element 2j in the low nibble of byte j) as eight
// signed bytes: the even elements, then the odd ones. Each nibble is biased
// to 0..15 (XOR 8), and 8 is taken off each byte with its top bit set, so no
// borrow crosses bytes.
__device__ __forceinline__ int2 v6_unpack_i4(int v) {
    const unsigned u = (unsigned)v ^ 0x88888888u;
    const unsigned lo = u & 0x0F0F0F0Fu, hi = (u >> 4) & 0x0F0F0F0Fu;
    return make_int2((int)(((lo | 0x80808080u) - 0x08080808u) ^ 0x80808080u),
                     (int)(((hi | 0x80808080u) - 0x08080808u) ^ 0x80808080u));
}

// The slice's activations go through shared memory in stages of `gst`
// groups (a multiple of 4; up to 16 rows, gst = gps: one stage, and no
// restaging code).
template <int NT, int FMT>
__device__ __forceinline__ void gemv_v6(const signed char* __restrict__ w, const float* __restrict__ scales,
                                        const int4* __restrict__ xq, float* __restrict__ y,
                                        float* __restrict__ part, unsigned* __restrict__ counters, int m, int kp,
                                        int gpr, int groups, int gps, int gst, int n, int mode) {
    constexpr int NB = 8 * NT;
    extern __shared__ __align__(16) int4 v6_xs[];
    __shared__ unsigned v6_last;
    const int lane = threadIdx.x & (WARP - 1), warp = threadIdx.x / WARP, g = lane >> 2, t = lane & 3;
    const int rows_out = mode == 2 ? m / 2 : m;
    const int o0 = blockIdx.x * (mode == 2 ? 64 : 128);
    const int S = gridDim.y, sl = blockIdx.y;
    const int G0 = sl * gps, G1 = min(groups, G0 + gps);
    // Weight row of block slot rl (0..127), or -1 past the end.
    auto wrow = [&](int rl) {
        if (mode == 2) {
            const int o = o0 + (rl & 63);
            return o < rows_out ? (rl < 64 ? o : rows_out + o) : -1;
        }
        return o0 + rl < m ? o0 + rl : -1;
    };
    const int rl0 = 16 * warp + g, rl1 = rl0 + 8;
    // Rows past the end read row 0 (valid memory) and are dropped.
    const int r0 = max(wrow(rl0), 0), r1 = max(wrow(rl1), 0);
    constexpr bool I4 = FMT == V6_I4, BF = FMT == V6_BF16;
    // A group is 32 bytes of a row (int4: 16, bf16: 64); the lane's quarter.
    constexpr int GB = I4 ? V6_GROUP / 2 : BF ? 2 * V6_GROUP : V6_GROUP, LB = GB / 4;
    // Bytes of one piece (limb plane) of one activation slot per group.
    constexpr int PB = BF ? 64 : 32;
    typedef typename v6_if<BF, int4, int2>::type AT; // a lane's bytes of one row and group
    const signed char* w0 = w + (size_t)r0 * kp + LB * t;
    const signed char* w1 = w + (size_t)r1 * kp + LB * t;
    const float* s0 = scales + (size_t)r0 * gpr;
    const float* s1 = scales + (size_t)r1 * gpr;
    AT a0[V6_U], a1[V6_U];
    float ws0[V6_U], ws1[V6_U];
    // Groups Gb .. Gb+V6_U-1 into the registers given; a row's last group
    // may hold only 16 bytes (rows are padded to 16).
    auto load = [&](int Gb, AT (&x0)[V6_U], AT (&x1)[V6_U], float (&v0)[V6_U], float (&v1)[V6_U]) {
#pragma unroll
        for (int u = 0; u < V6_U; u++) {
            const int G = Gb + u;
            const bool in = G < G1 && GB * G + LB * t < kp;
            if constexpr (BF) {
                const int4 z = make_int4(0, 0, 0, 0);
                x0[u] = in ? ld_stream((const int4*)(w0 + GB * G)) : z;
                x1[u] = in ? ld_stream((const int4*)(w1 + GB * G)) : z;
                v0[u] = v1[u] = 0.f; // no scales
                continue;
            } else if constexpr (I4) {
                x0[u] = v6_unpack_i4(in ? ld_stream4(w0 + GB * G) : 0);
                x1[u] = v6_unpack_i4(in ? ld_stream4(w1 + GB * G) : 0);
            } else {
                x0[u] = in ? ld_stream8(w0 + GB * G) : make_int2(0, 0);
                x1[u] = in ? ld_stream8(w1 + GB * G) : make_int2(0, 0);
            }
            if constexpr (!BF) {
                v0[u] = G < G1 ? __ldg(s0 + G) : 0.f;
                v1[u] = G < G1 ? __ldg(s1 + G) : 0.f;
            }
        }
    };
    load(G0, a0, a1, ws0, ws1); // weights never change: before grid_dep_wait
    constexpr int PI = 3 * NB * PB / 16; // int4s of one group's pieces
    float* sxs = (float*)(v6_xs + (size_t)gst * PI);
    float* res = sxs + (BF ? 0 : gst * NB); // [NB][128] results of the block's slots
    // Groups [Gs, Ge) of the activations into shared memory.
    auto stage = [&](int Gs, int Ge) {
        const int planes = (Ge - Gs) * PI;
        const int4* src = xq + (size_t)Gs * PI;
        for (int i = threadIdx.x; i < planes; i += BLOCK) v6_xs[i] = src[i];
        if constexpr (!BF) {
            const float* sxg = (const float*)(xq + (size_t)groups * PI) + (size_t)Gs * NB;
            for (int i = threadIdx.x; i < (Ge - Gs) * NB; i += BLOCK) sxs[i] = sxg[i];
        }
    };
    grid_dep_wait();
    int Gs = G0, Ge = min(G1, G0 + gst);
    stage(Gs, Ge);
    __syncthreads();
    grid_dep_launch();
    const char* xs = (const char*)v6_xs;
    float acc[NT][4];
#pragma unroll
    for (int tt = 0; tt < NT; tt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[tt][i] = 0.f;
    for (int Gb = G0; Gb < G1; Gb += V6_U) {
        if (NT >= 4 && Gb >= Ge) { // the next stage (block-uniform)
            __syncthreads();
            Gs = Ge;
            Ge = min(G1, Gs + gst);
            stage(Gs, Ge);
            __syncthreads();
        }
        AT n0[V6_U], n1[V6_U];
        float nv0[V6_U], nv1[V6_U];
        load(Gb + V6_U, n0, n1, nv0, nv1);
#pragma unroll
        for (int u = 0; u < V6_U; u++) {
            if constexpr (BF) {
              if (Gb + u < G1) {
                const int lg = Gb + u - Gs;
                const int lo4[4] = {a0[u].x, a1[u].x, a0[u].y, a1[u].y}; // inputs 8t..8t+3
                const int hi4[4] = {a0[u].z, a1[u].z, a0[u].w, a1[u].w}; // inputs 8t+4..8t+7
#pragma unroll
                for (int tt = 0; tt < NT; tt++) {
                    const char* bp = xs + ((size_t)lg * 3 * NB + 8 * tt + g) * PB + 16 * t;
                    // The group's sum from zero, then one add, as the f32
                    // variants add chunk sums (a chain over the whole slice
                    // was 4-5x less accurate).
                    float cg[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                    for (int p = 2; p >= 0; p--) { // lo, mid, hi: the smallest first
                        const int4 bv = *(const int4*)(bp + (size_t)p * NB * PB);
                        v6_mma_bf16(cg, lo4, bv.x, bv.y);
                        v6_mma_bf16(cg, hi4, bv.z, bv.w);
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[tt][i] += cg[i];
                }
              }
            } else if (Gb + u < G1) {
                const int lg = Gb + u - Gs;
                const int a[4] = {a0[u].x, a1[u].x, a0[u].y, a1[u].y};
#pragma unroll
                for (int tt = 0; tt < NT; tt++) {
                    int d[3][4];
                    const char* bp = xs + ((size_t)lg * 3 * NB + 8 * tt + g) * PB + 8 * t;
                    const int2 lo = *(const int2*)bp;
                    const int2 mid = *(const int2*)(bp + NB * 32);
                    const int2 hi = *(const int2*)(bp + 2 * NB * 32);
                    v6_mma<false>(d[0], a, lo.x, lo.y);
                    v6_mma<false>(d[1], a, mid.x, mid.y);
                    v6_mma<true>(d[2], a, hi.x, hi.y);
                    const float2 sx = *(const float2*)(sxs + lg * NB + 8 * tt + 2 * t);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float dl = __int_as_float(d[0][i]) - 12582912.0f;
                        const float dm = __int_as_float(d[1][i]) - 12582912.0f;
                        const float dh = __int_as_float(d[2][i]) - 12582912.0f;
                        const float dd = fmaf(dh, 65536.f, fmaf(dm, 256.f, dl));
                        const float sc = __fmul_rn(i < 2 ? ws0[u] : ws1[u], (i & 1) ? sx.y : sx.x);
                        acc[tt][i] = fmaf(sc, dd, acc[tt][i]);
                    }
                }
            }
        }
#pragma unroll
        for (int u = 0; u < V6_U; u++) {
            a0[u] = n0[u];
            a1[u] = n1[u];
            ws0[u] = nv0[u];
            ws1[u] = nv1[u];
        }
    }
#pragma unroll
    for (int tt = 0; tt < NT; tt++)
#pragma unroll
        for (int i = 0; i < 4; i++) res[(8 * tt + 2 * t + (i & 1)) * 128 + (i < 2 ? rl0 : rl1)] = acc[tt][i];
    __syncthreads();
    if (S > 1) {
        // Publish this slice's sums; the last block of the row tile adds all S.
        const size_t mp = (size_t)gridDim.x * 128;
        float* pb = part + (size_t)blockIdx.x * 128;
        for (int i = threadIdx.x; i < n * 128; i += BLOCK)
            pb[((size_t)sl * n + i / 128) * mp + i % 128] = res[i];
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) v6_last = atomicAdd(&counters[blockIdx.x], 1u) == (unsigned)(S - 1);
        __syncthreads();
        if (!v6_last) return;
        __threadfence();
        for (int i = threadIdx.x; i < n * 128; i += BLOCK) {
            float v = 0.f;
            for (int s2 = 0; s2 < S; s2++) v += __ldcg(pb + ((size_t)s2 * n + i / 128) * mp + i % 128);
            res[i] = v;
        }
        __syncthreads();
        if (threadIdx.x == 0) counters[blockIdx.x] = 0;
    }
    if (mode == 2) {
        for (int i = threadIdx.x; i < n * 64; i += BLOCK) {
            const int b = i / 64, j = i % 64;
            if (o0 + j < rows_out)
                y[(size_t)b * rows_out + o0 + j] = silu_mul(res[b * 128 + j], res[b * 128 + 64 + j]);
        }
    } else {
        for (int i = threadIdx.x; i < n * 128; i += BLOCK) {
            const int b = i / 128, j = i % 128;
            if (o0 + j < m) {
                const size_t yi = (size_t)b * m + o0 + j;
                y[yi] = mode == 1 ? y[yi] + res[i] : res[i];
            }
        }
    }
}

#define GEMV_V6_ENTRY(NAME, NT, FMT)                                                                          \
    extern "C" __global__ void __launch_bounds__(BLOCK)                                                       \
        NAME(const signed char* __restrict__ w, const float* __restrict__ scales, const int4* __restrict__ xq, \
             float* __restrict__ y, float* __restrict__ part, unsigned* __restrict__ counters, int m, int kp,  \
             int gpr, int groups, int gps, int gst, int n, int mode) {                                        \
        gemv_v6<NT, FMT>(w, scales, xq, y, part, counters, m, kp, gpr, groups, gps, gst, n, mode);            \
    }
// Tiles of 8 activation rows: up to 8 and 16 rows (decode), 32 and 64
// (prefill); int8 weights, then int4, then bf16 (kp: bytes per row each time).
GEMV_V6_ENTRY(gemv_v6_i8_t1, 1, V6_I8)
GEMV_V6_ENTRY(gemv_v6_i8_t2, 2, V6_I8)
GEMV_V6_ENTRY(gemv_v6_i8_t4, 4, V6_I8)
GEMV_V6_ENTRY(gemv_v6_i8_t8, 8, V6_I8)
GEMV_V6_ENTRY(gemv_v6_i4_t1, 1, V6_I4)
GEMV_V6_ENTRY(gemv_v6_i4_t2, 2, V6_I4)
GEMV_V6_ENTRY(gemv_v6_i4_t4, 4, V6_I4)
GEMV_V6_ENTRY(gemv_v6_i4_t8, 8, V6_I4)
GEMV_V6_ENTRY(gemv_v6_bf16_t1, 1, V6_BF16)
GEMV_V6_ENTRY(gemv_v6_bf16_t2, 2, V6_BF16)
GEMV_V6_ENTRY(gemv_v6_bf16_t4, 4, V6_BF16)
GEMV_V6_ENTRY(gemv_v6_bf16_t8, 8, V6_BF16)

#define GEMV_V2_ENTRY(NAME, WT, NB, R, U) \
    extern "C" __global__ void __launch_bounds__(BLOCK) NAME(GEMV_PARAMS) { gemv_v2<WT, NB, R, U>(GEMV_ARGS); }
#define GEMV_V3_ENTRY(NAME, WT, NB, R, S) \
    extern "C" __global__ void __launch_bounds__(BLOCK) NAME(GEMV_PARAMS) { gemv_v3<WT, NB, R, S>(GEMV_ARGS); }

// Index order (module.rs): one row with 4 and 2 rows per warp, then 2, 4, 8, 16 rows.
GEMV_V2_ENTRY(gemv_v2_i8_n1_r4, WInt8, 1, 4, 2)
GEMV_V2_ENTRY(gemv_v2_i8_n1_r2, WInt8, 1, 2, 4)
GEMV_V2_ENTRY(gemv_v2_i8_n2, WInt8, 2, 2, 2)
GEMV_V2_ENTRY(gemv_v2_i8_n4, WInt8, 4, 2, 2)
GEMV_V2_ENTRY(gemv_v2_i8_n8, WInt8, 8, 2, 1)
GEMV_V2_ENTRY(gemv_v2_i8_n16, WInt8, 16, 2, 1)
GEMV_V2_ENTRY(gemv_v2_i4_n1_r4, WInt4, 1, 4, 1)
GEMV_V2_ENTRY(gemv_v2_i4_n1_r2, WInt4, 1, 2, 2)
GEMV_V2_ENTRY(gemv_v2_i4_n2, WInt4, 2, 2, 1)
GEMV_V2_ENTRY(gemv_v2_i4_n4, WInt4, 4, 2, 1)
GEMV_V2_ENTRY(gemv_v2_i4_n8, WInt4, 8, 2, 1)
GEMV_V2_ENTRY(gemv_v2_i4_n16, WInt4, 16, 2, 1)
GEMV_V2_ENTRY(gemv_v2_bf16_n1_r4, WBf16, 1, 4, 2)
GEMV_V2_ENTRY(gemv_v2_bf16_n1_r2, WBf16, 1, 2, 4)
GEMV_V2_ENTRY(gemv_v2_bf16_n2, WBf16, 2, 2, 2)
GEMV_V2_ENTRY(gemv_v2_bf16_n4, WBf16, 4, 2, 2)
GEMV_V2_ENTRY(gemv_v2_bf16_n8, WBf16, 8, 2, 2)
GEMV_V2_ENTRY(gemv_v2_bf16_n16, WBf16, 16, 2, 1)
// v4: the lean one-row kernel above, with v2's rows and chunks per step.
#define GEMV_V4_ENTRY(NAME, WT, R, U) \
    extern "C" __global__ void __launch_bounds__(BLOCK) NAME(GEMV_PARAMS) { gemv_v4<WT, R, U>(GEMV_ARGS); }
// int8 4 x 2 bounded to 2 blocks per SM (128 registers; 161 unbounded, 1
// block): v2's 4 x 2 kernel runs 2 blocks per SM (122 registers) and beat v4 on
// the 22016- and 32000-row products on the H200 (run 4), the only shapes where
// it did. The bound spills a few of the lane's fixed activation offsets: 4
// local (L1) loads per step of 128 weights.
extern "C" __global__ void __launch_bounds__(BLOCK, 2) gemv_v4_i8_n1_r4(GEMV_PARAMS) { gemv_v4<WInt8, 4, 2>(GEMV_ARGS); }
GEMV_V4_ENTRY(gemv_v4_i8_n1_r2, WInt8, 2, 4)
GEMV_V4_ENTRY(gemv_v4_bf16_n1_r4, WBf16, 4, 2)
GEMV_V4_ENTRY(gemv_v4_bf16_n1_r2, WBf16, 2, 4)
GEMV_V4_ENTRY(gemv_v4_i4_n1_r4, WInt4, 4, 1)
GEMV_V4_ENTRY(gemv_v4_i4_n1_r2, WInt4, 2, 2)
// v5 (int8 only, one activation row): 4 x 2 and 2 x 4 rows x chunks per step, as v4.
extern "C" __global__ void __launch_bounds__(BLOCK) gemv_v5_i8_n1_r4(GEMV_PARAMS) { gemv_v5<4, 2>(GEMV_ARGS); }
extern "C" __global__ void __launch_bounds__(BLOCK) gemv_v5_i8_n1_r2(GEMV_PARAMS) { gemv_v5<2, 4>(GEMV_ARGS); }
// v3 ring (module.rs V3_SHAPES must match): 6 stages of 16 rows (48 KiB) up to 8
// activation rows, which leaves room for two blocks per SM with a 44 KiB x
// (k = 11008); 4 stages of 32 rows for 16 activation rows.
GEMV_V3_ENTRY(gemv_v3_i8_n1, WInt8, 1, 2, 6)
GEMV_V3_ENTRY(gemv_v3_i8_n2, WInt8, 2, 2, 6)
GEMV_V3_ENTRY(gemv_v3_i8_n4, WInt8, 4, 2, 6)
GEMV_V3_ENTRY(gemv_v3_i8_n8, WInt8, 8, 2, 6)
GEMV_V3_ENTRY(gemv_v3_i8_n16, WInt8, 16, 4, 4)
GEMV_V3_ENTRY(gemv_v3_bf16_n1, WBf16, 1, 2, 6)
GEMV_V3_ENTRY(gemv_v3_bf16_n2, WBf16, 2, 2, 6)
GEMV_V3_ENTRY(gemv_v3_bf16_n4, WBf16, 4, 2, 6)
GEMV_V3_ENTRY(gemv_v3_bf16_n8, WBf16, 8, 2, 6)
GEMV_V3_ENTRY(gemv_v3_bf16_n16, WBf16, 16, 4, 4)
