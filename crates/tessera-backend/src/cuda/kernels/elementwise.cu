// ---------------------------------------------------------------- embedding

// out[i] = table[ids[i]] (ids == 0: a single row, id0). Block (i, j) writes
// columns j*blockDim.x.. of row i, gridDim.y blocks per row: one element per
// thread, so a one-token lookup is one memory round trip, not hidden/blockDim.
extern "C" __global__ void embedding_f32(const float* __restrict__ table, const unsigned* __restrict__ ids,
                                         unsigned id0, int hidden, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < hidden; c += gridDim.y * blockDim.x)
        out[(size_t)i * hidden + c] = table[(size_t)id * hidden + c];
}

extern "C" __global__ void embedding_i8(const signed char* __restrict__ q, const float* __restrict__ scales,
                                        const unsigned* __restrict__ ids, unsigned id0, int hidden, int kp,
                                        int gpr, int group, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < hidden; c += gridDim.y * blockDim.x)
        out[(size_t)i * hidden + c] = (float)q[(size_t)id * kp + c] * scales[(size_t)id * gpr + c / group];
}

// Element c of an int4 row (two per byte, low nibble first), -8..7.
__device__ __forceinline__ int q4_at(const unsigned char* __restrict__ row, int c) {
    unsigned b = row[c >> 1];
    int nib = (c & 1) ? (int)(b >> 4) : (int)(b & 15u);
    return (nib ^ 8) - 8;
}

// kp: elements per padded row (rows are kp / 2 bytes).
extern "C" __global__ void embedding_i4(const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                        const unsigned* __restrict__ ids, unsigned id0, int hidden, int kp,
                                        int gpr, int group, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    const unsigned char* row = q + (size_t)id * (kp / 2);
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < hidden; c += gridDim.y * blockDim.x)
        out[(size_t)i * hidden + c] = (float)q4_at(row, c) * scales[(size_t)id * gpr + c / group];
}

extern "C" __global__ void embedding_bf16(const unsigned short* __restrict__ w, const unsigned* __restrict__ ids,
                                          unsigned id0, int hidden, int kp, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < hidden; c += gridDim.y * blockDim.x)
        out[(size_t)i * hidden + c] = bf16_bits_to_f32(w[(size_t)id * kp + c]);
}

// ---------------------------------------------------------------- elementwise

// One BLOCK-thread block per row: y = w * (x * rsqrt(mean(x^2) + eps)). The
// GEMVs that fuse RMSNorm use the same block_inv_rms, so they get the same bits.
extern "C" __global__ void __launch_bounds__(BLOCK)
    rms_norm(const float* __restrict__ x, const float* __restrict__ w, int cols, float eps, float* __restrict__ y) {
    __shared__ float red[BLOCK / WARP];
    KERNEL_PROLOGUE();
    const float* xr = x + (size_t)blockIdx.x * cols;
    float inv = block_inv_rms(xr, cols, eps, red);
    for (int c = threadIdx.x; c < cols; c += BLOCK) y[(size_t)blockIdx.x * cols + c] = norm_elem(xr[c], w[c], inv);
}

extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b, int cols, long long total) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < total) x[i] += b[i % cols];
}

extern "C" __global__ void add_assign(float* __restrict__ x, const float* __restrict__ y, long long total) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < total) x[i] += y[i];
}

// gate_up rows are [gate | up] of width 2m; out = silu(gate) * up.
extern "C" __global__ void swiglu(const float* __restrict__ gu, int m, long long total, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= total) return;
    long long r = i / m, c = i % m;
    out[i] = silu_mul(gu[r * 2 * m + c], gu[r * 2 * m + m + c]);
}

// Rotate-half RoPE in place; row i is at position start + i (+ *dpos, see step_pos).
extern "C" __global__ void rope(float* __restrict__ x, int rows, int heads, int head_dim, int start,
                                const float* __restrict__ inv_freq, const int* __restrict__ dpos) {
    KERNEL_PROLOGUE();
    start += step_pos(dpos);
    int half = head_dim / 2;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * half) return;
    int d = i % half;
    long long rh = i / half;
    int row = rh / heads;
    float* v = x + rh * head_dim;
    float c, s;
    rope_cs(start + row, inv_freq[d], &c, &s);
    float a = v[d], b = v[d + half];
    v[d] = rope_lo(a, b, c, s);
    v[d + half] = rope_hi(a, b, c, s);
}

// dst [rows, cols] = columns col0.. of src (row stride `stride`), with RoPE
// (heads of head_dim, row r at position start + r + *dpos) when inv_freq is set.
// Materializes a column view (cuda/tensor.rs).
extern "C" __global__ void gather_cols(const float* __restrict__ src, int stride, int col0, int rows, int cols,
                                       float* __restrict__ dst, const float* __restrict__ inv_freq, int head_dim,
                                       int start, const int* __restrict__ dpos) {
    KERNEL_PROLOGUE();
    start += step_pos(dpos);
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    int r = i / cols, c = i % cols;
    const float* sr = src + (size_t)r * stride + col0;
    dst[i] = inv_freq ? rope_elem(sr + (c / head_dim) * head_dim, c % head_dim, head_dim, start + r, inv_freq)
                      : sr[c];
}

// ---------------------------------------------------------------- weight conversion

// One warp per (row, group): the reference quantizer (max|w|/127, round half
// away from zero), bit-identical to Int8Matrix::quantize (IEEE div, no fast
// math). Groups past the row's end (gpr padding) get scale 0.
extern "C" __global__ void quantize_i8(const float* __restrict__ w, int m, int k, int kp, int gpr, int group,
                                       signed char* __restrict__ q, float* __restrict__ scales) {
    KERNEL_PROLOGUE();
    long long gw = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (gw >= (long long)m * gpr) return;
    int r = gw / gpr, g = gw % gpr;
    int c0 = g * group, c1 = min(c0 + group, k);
    const float* src = w + (size_t)r * k;
    float amax = 0.f;
    for (int c = c0 + lane; c < c1; c += WARP) amax = fmaxf(amax, fabsf(src[c]));
    amax = warp_max(amax);
    float scale = amax / 127.0f;
    float inv = scale > 0.f ? 1.0f / scale : 0.f;
    for (int c = c0 + lane; c < c1; c += WARP) {
        float v = roundf(src[c] * inv);
        q[(size_t)r * kp + c] = (signed char)fminf(fmaxf(v, -127.f), 127.f);
    }
    if (lane == 0) scales[(size_t)r * gpr + g] = scale;
}

// Element i of an int8 / int4 matrix [m, k] (row stride kp) times its
// group's scale: the dequantized weight, for the prefill kernels below.
__device__ __forceinline__ float dq_i8(const signed char* __restrict__ q, const float* __restrict__ scales,
                                       long long i, int k, int kp, int gpr, int group) {
    int r = i / k, c = i % k;
    return (float)q[(size_t)r * kp + c] * scales[(size_t)r * gpr + c / group];
}

__device__ __forceinline__ float dq_i4(const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                       long long i, int k, int kp, int gpr, int group) {
    int r = i / k, c = i % k;
    return (float)q4_at(q + (size_t)r * (kp / 2), c) * scales[(size_t)r * gpr + c / group];
}

// Dequantize to an f32 [m, k] scratch matrix (for cuBLAS when n is large).
extern "C" __global__ void dequantize_i8(const signed char* __restrict__ q, const float* __restrict__ scales, int m,
                                         int k, int kp, int gpr, int group, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    out[i] = dq_i8(q, scales, i, k, kp, gpr, group);
}

// Int4 [m, kp / 2 bytes] to f32 [m, k] scratch (prefill, as dequantize_i8).
extern "C" __global__ void dequantize_i4(const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                         int m, int k, int kp, int gpr, int group, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    out[i] = dq_i4(q, scales, i, k, kp, gpr, group);
}

// Int8 / int4 [m, k] (as dequantize_i8 / _i4) to two bf16 [m, k] matrices,
// hi = bf16(w) and lo = bf16(w - hi), w = q * scale: hi + lo carries about 16
// significant bits of w, for prefill products on tensor cores (cuda/gemm.rs).
__device__ __forceinline__ void store_split(float w, long long i, unsigned short* __restrict__ hi,
                                            unsigned short* __restrict__ lo) {
    unsigned short h = f32_to_bf16_bits(w);
    hi[i] = h;
    lo[i] = f32_to_bf16_bits(__fsub_rn(w, bf16_bits_to_f32(h)));
}

extern "C" __global__ void dequantize_i8_split(const signed char* __restrict__ q, const float* __restrict__ scales,
                                               int m, int k, int kp, int gpr, int group,
                                               unsigned short* __restrict__ hi, unsigned short* __restrict__ lo) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    store_split(dq_i8(q, scales, i, k, kp, gpr, group), i, hi, lo);
}

extern "C" __global__ void dequantize_i4_split(const unsigned char* __restrict__ q, const float* __restrict__ scales,
                                               int m, int k, int kp, int gpr, int group,
                                               unsigned short* __restrict__ hi, unsigned short* __restrict__ lo) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    store_split(dq_i4(q, scales, i, k, kp, gpr, group), i, hi, lo);
}

// f32 [m, k] -> bf16 [m, kp] (padding stays as allocated: zero).
extern "C" __global__ void to_bf16(const float* __restrict__ w, int m, int k, int kp, unsigned short* __restrict__ out) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    int r = i / k, c = i % k;
    out[(size_t)r * kp + c] = f32_to_bf16_bits(w[i]);
}

// x = hi + lo with both in bf16 (about 16 significant bits together), so a
// bf16 tensor-core GEMM over [hi; lo] keeps the activations near f32 precision.
extern "C" __global__ void split_bf16(const float* __restrict__ x, long long total, unsigned short* __restrict__ hi,
                                      unsigned short* __restrict__ lo) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= total) return;
    float v = x[i];
    unsigned short h = f32_to_bf16_bits(v);
    hi[i] = h;
    lo[i] = f32_to_bf16_bits(__fsub_rn(v, bf16_bits_to_f32(h)));
}

// out[i] = p[i] + p[total + i]: the hi and lo halves of a split-activation GEMM.
extern "C" __global__ void add_halves(const float* __restrict__ p, long long total, float* __restrict__ out) {
    KERNEL_PROLOGUE();
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < total) out[i] = p[i] + p[total + i];
}

// Read n int4s, so L2 holds only clean lines of `buf` (before timing a kernel
// that must stream from HBM). `sink` is written only if the XOR of everything
// read is 0x7fffffff, which never happens for the zeroed buffer; the reads
// cannot be optimized away.
extern "C" __global__ void l2_flush(const int4* __restrict__ buf, long long n, int* __restrict__ sink) {
    KERNEL_PROLOGUE();
    int acc = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int4 v = buf[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x7fffffff) sink[0] = acc;
}

// ---------------------------------------------------------------- greedy token choice

// The id of the largest of the n logits, as the host's greedy choice
// (tessera_backend::argmax) picks it: ties go to the lowest id, a NaN never
// wins, and a NaN at id 0 makes the answer 0. The whole block of BLOCK
// threads calls it; the answer is valid in thread 0.
__device__ __forceinline__ int argmax_block(const float* __restrict__ logits, int n) {
    __shared__ float sv[BLOCK / WARP];
    __shared__ int si[BLOCK / WARP];
    const float first = logits[0];
    // Each thread's best over its stride; start from id 0 so "first largest"
    // holds, and `>` never takes a NaN.
    float bv = first;
    int bi = 0;
    for (int i = threadIdx.x; i < n; i += BLOCK) {
        const float v = logits[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    // Warp and block: the larger value wins, the lower id on equal values.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if ((threadIdx.x & (WARP - 1)) == 0) {
        sv[threadIdx.x / WARP] = bv;
        si[threadIdx.x / WARP] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < BLOCK / WARP; w++)
            if (sv[w] > bv || (sv[w] == bv && si[w] < bi)) {
                bv = sv[w];
                bi = si[w];
            }
        if (first != first) bi = 0; // NaN at id 0
    }
    return bi;
}

// The greedy choice of a recorded decode step (one block): written to desc[1]
// (the next step's token) with desc[0] (its position) advanced by one, and
// appended to tokens[desc[2]++] (at most cap of them), so a recorded step that
// ends with this kernel feeds itself and replays can follow each other
// without the host.
extern "C" __global__ void __launch_bounds__(BLOCK) argmax_step(const float* __restrict__ logits, int n,
                                                                 int* __restrict__ desc, int* __restrict__ tokens,
                                                                 int cap) {
    KERNEL_PROLOGUE();
    const int bi = argmax_block(logits, n);
    if (threadIdx.x == 0) {
        desc[0] += 1;
        desc[1] = bi;
        const int c = desc[2];
        if (c < cap) tokens[c] = bi;
        desc[2] = c + 1;
    }
}

// The greedy choice of each row of x ([rows, n], one block per row) into out[row].
extern "C" __global__ void __launch_bounds__(BLOCK) argmax_rows(const float* __restrict__ x, int n,
                                                                 int* __restrict__ out) {
    KERNEL_PROLOGUE();
    const int bi = argmax_block(x + (size_t)blockIdx.x * n, n);
    if (threadIdx.x == 0) out[blockIdx.x] = bi;
}
