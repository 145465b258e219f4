// Tessera CUDA kernels, compiled at run time by NVRTC (see cuda/module.rs).
//
// Everything is f32 except int8 weights, so results match the CPU backend on
// the same weights up to summation order. No headers are included: NVRTC then
// needs no include path at all.
//
// Int8 weights: `q` is [m, kp] int8 (kp = k rounded up to 16, padding is zero),
// `scales` is [m, gpr] f32 with one scale per GROUP inputs of a row.

#define GROUP 128
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

// ---------------------------------------------------------------- embedding

// out[i] = table[ids[i]] (ids == 0: a single row, id0).
extern "C" __global__ void embedding_f32(const float* __restrict__ table, const unsigned* __restrict__ ids,
                                         unsigned id0, int hidden, float* __restrict__ out) {
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[(size_t)i * hidden + c] = table[(size_t)id * hidden + c];
}

extern "C" __global__ void embedding_i8(const signed char* __restrict__ q, const float* __restrict__ scales,
                                        const unsigned* __restrict__ ids, unsigned id0, int hidden, int kp,
                                        int gpr, float* __restrict__ out) {
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[(size_t)i * hidden + c] = (float)q[(size_t)id * kp + c] * scales[(size_t)id * gpr + c / GROUP];
}

// ---------------------------------------------------------------- elementwise

// One block per row: y = w * (x * rsqrt(mean(x^2) + eps)), the HF order of operations.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w, int cols, float eps,
                                    float* __restrict__ y) {
    __shared__ float part[32];
    const float* xr = x + (size_t)blockIdx.x * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c] * xr[c];
    s = warp_sum(s);
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < (int)(blockDim.x / WARP) ? part[lane] : 0.f;
        s = warp_sum(s);
        if (lane == 0) part[0] = s;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(part[0] / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) y[(size_t)blockIdx.x * cols + c] = w[c] * (xr[c] * inv);
}

extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b, int cols, long long total) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < total) x[i] += b[i % cols];
}

extern "C" __global__ void add_assign(float* __restrict__ x, const float* __restrict__ y, long long total) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < total) x[i] += y[i];
}

// gate_up rows are [gate | up] of width 2m; out = silu(gate) * up.
extern "C" __global__ void swiglu(const float* __restrict__ gu, int m, long long total, float* __restrict__ out) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= total) return;
    long long r = i / m, c = i % m;
    float g = gu[r * 2 * m + c];
    out[i] = g / (1.0f + expf(-g)) * gu[r * 2 * m + m + c];
}

// Rotate-half RoPE in place; row i is at position start + i.
extern "C" __global__ void rope(float* __restrict__ x, int rows, int heads, int head_dim, int start,
                                const float* __restrict__ inv_freq) {
    int half = head_dim / 2;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * half) return;
    int d = i % half;
    long long rh = i / half;
    int row = rh / heads;
    float* v = x + rh * head_dim;
    float angle = (float)(start + row) * inv_freq[d];
    float s, c;
    sincosf(angle, &s, &c);
    float a = v[d], b = v[d + half];
    v[d] = a * c - b * s;
    v[d + half] = b * c + a * s;
}

// Copy columns col0 .. col0+w0+w1+w2+w3 of src [rows, cols] into up to four
// outputs of widths w0..w3 (one launch instead of one copy per piece).
extern "C" __global__ void split_cols4(const float* __restrict__ src, int rows, int cols, int col0, float* d0,
                                       int w0, float* d1, int w1, float* d2, int w2, float* d3, int w3) {
    int span = w0 + w1 + w2 + w3;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)rows * span) return;
    int r = i / span, c = i % span;
    float v = src[(size_t)r * cols + col0 + c];
    if (c < w0) { d0[(size_t)r * w0 + c] = v; return; }
    c -= w0;
    if (c < w1) { d1[(size_t)r * w1 + c] = v; return; }
    c -= w1;
    if (c < w2) { d2[(size_t)r * w2 + c] = v; return; }
    c -= w2;
    d3[(size_t)r * w3 + c] = v;
}

// ---------------------------------------------------------------- int8 weights

// One warp per (row, group): the reference quantizer (max|w|/127, round half
// away from zero), bit-identical to Int8Matrix::quantize (IEEE div, no fast math).
extern "C" __global__ void quantize_i8(const float* __restrict__ w, int m, int k, int kp, int gpr,
                                       signed char* __restrict__ q, float* __restrict__ scales) {
    long long gw = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / WARP;
    int lane = threadIdx.x % WARP;
    if (gw >= (long long)m * gpr) return;
    int r = gw / gpr, g = gw % gpr;
    int c0 = g * GROUP, c1 = min(c0 + GROUP, k);
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

// Dequantize to an f32 [m, k] scratch matrix (for cuBLAS when n is large).
extern "C" __global__ void dequantize_i8(const signed char* __restrict__ q, const float* __restrict__ scales, int m,
                                         int k, int kp, int gpr, float* __restrict__ out) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    int r = i / k, c = i % k;
    out[i] = (float)q[(size_t)r * kp + c] * scales[(size_t)r * gpr + c / GROUP];
}

// Sign-extend the four bytes of v and add their products with x0..x3.
__device__ __forceinline__ float dot4(int v, float x0, float x1, float x2, float x3, float acc) {
    acc = fmaf((float)((v << 24) >> 24), x0, acc);
    acc = fmaf((float)((v << 16) >> 24), x1, acc);
    acc = fmaf((float)((v << 8) >> 24), x2, acc);
    return fmaf((float)(v >> 24), x3, acc);
}

#define GEMV_WARPS 8  // rows per block: one warp per weight row
#define GEMV_UNROLL 4 // 16-byte loads in flight per lane

// sum_g scale[row, g] * sum_{c in g} q[row, c] * x[b, c] for the NB (>= n)
// activation rows, reduced over the warp (every lane gets the sums). One warp
// streams one weight row with 16-byte loads, so weight bytes are read exactly
// once for all activation rows; x (small) comes through L1/L2.
template <int NB>
__device__ __forceinline__ void gemv_row(const signed char* __restrict__ q, const float* __restrict__ scales,
                                         const float* __restrict__ x, int row, int k, int kp, int gpr, int n,
                                         float (&acc)[NB]) {
    int lane = threadIdx.x % WARP;
    const int4* wr = (const int4*)(q + (size_t)row * kp);
    const float* sr = scales + (size_t)row * gpr;
    const bool vec_x = (k % 4) == 0;
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = 0.f;
    int chunks = kp / 16;
    for (int base = lane; base < chunks; base += WARP * GEMV_UNROLL) {
        int4 wv[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int ch = base + u * WARP;
            wv[u] = ch < chunks ? __ldg(wr + ch) : make_int4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            int ch = base + u * WARP;
            if (ch >= chunks) break;
            int c = ch * 16;
            float s = __ldg(sr + c / GROUP);
            int wq[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
            for (int b = 0; b < NB; b++) {
                if (b >= n) break;
                const float* xb = x + (size_t)b * k + c;
                float d = 0.f;
                if (vec_x && c + 16 <= k) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float4 xv = __ldg((const float4*)xb + j);
                        d = dot4(wq[j], xv.x, xv.y, xv.z, xv.w, d);
                    }
                } else {
                    // Ragged tail (or unaligned x): padding weights are zero, guard x.
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float xs[4];
#pragma unroll
                        for (int e = 0; e < 4; e++) xs[e] = (c + 4 * j + e < k) ? xb[4 * j + e] : 0.f;
                        d = dot4(wq[j], xs[0], xs[1], xs[2], xs[3], d);
                    }
                }
                acc[b] = fmaf(s, d, acc[b]);
            }
        }
    }
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = warp_sum(acc[b]);
}

// W8A16-style product x [n, k] @ w[m, k]^T with a fused epilogue:
//   mode 0: y[n, m]  = product
//   mode 1: y[n, m] += product            (residual add fused in)
//   mode 2: y[n, m/2] = silu(p[:, :m/2]) * p[:, m/2:]   (SwiGLU fused in; the
//           warp computes gate row r and up row r + m/2)
// Products are identical in every mode, so fusing changes no result bit.
template <int NB>
__device__ __forceinline__ void gemv_i8(const signed char* __restrict__ q, const float* __restrict__ scales,
                                        const float* __restrict__ x, float* __restrict__ y, int m, int k, int kp,
                                        int gpr, int n, int mode) {
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int rows_out = mode == 2 ? m / 2 : m;
    int row = blockIdx.x * GEMV_WARPS + warp;
    if (row >= rows_out) return;
    float a[NB];
    gemv_row<NB>(q, scales, x, row, k, kp, gpr, n, a);
    if (mode == 2) {
        float u[NB];
        gemv_row<NB>(q, scales, x, row + rows_out, k, kp, gpr, n, u);
        if (lane == 0)
            for (int b = 0; b < n && b < NB; b++) y[(size_t)b * rows_out + row] = a[b] / (1.0f + expf(-a[b])) * u[b];
    } else if (lane == 0) {
        for (int b = 0; b < n && b < NB; b++) {
            size_t i = (size_t)b * m + row;
            y[i] = mode == 1 ? y[i] + a[b] : a[b];
        }
    }
}

#define GEMV_ENTRY(NB)                                                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * WARP) gemv_i8_##NB(                           \
        const signed char* __restrict__ q, const float* __restrict__ scales, const float* __restrict__ x,    \
        float* __restrict__ y, int m, int k, int kp, int gpr, int n, int mode) {                            \
        gemv_i8<NB>(q, scales, x, y, m, k, kp, gpr, n, mode);                                                \
    }
GEMV_ENTRY(1)
GEMV_ENTRY(2)
GEMV_ENTRY(4)
GEMV_ENTRY(8)

// ---------------------------------------------------------------- attention

// Store k, v [n, kvh*hd] at positions start.. of one layer's cache [kvh][cap][hd].
extern "C" __global__ void kv_store(const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ kc,
                                    float* __restrict__ vc, int n, int kvh, int hd, int cap, int start) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    int width = kvh * hd;
    if (i >= (long long)n * width) return;
    int row = i / width, rem = i % width;
    int h = rem / hd, d = rem % hd;
    size_t dst = ((size_t)h * cap + start + row) * hd + d;
    kc[dst] = k[i];
    vc[dst] = v[i];
}

#define ATT_WARPS 8

// Causal GQA attention with an online softmax: block (i, h) computes query row
// i, head h over positions 0..=start+i. Each warp folds a strided subset of the
// positions into its own (max, sum, acc); the warps are merged at the end. No
// score matrix is materialised, so memory stays O(head_dim) per block.
// ATT_MAXD: head_dim / 32 rounded up (registers per lane); ATT_POS: positions
// per warp per step, loaded together for memory-level parallelism.
template <int ATT_MAXD, int ATT_POS>
__device__ __forceinline__ void attention_impl(const float* __restrict__ q, const float* __restrict__ kc,
                                               const float* __restrict__ vc, float* __restrict__ out, int heads,
                                               int kvh, int hd, int cap, int start, float scale) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAXD * WARP];
    int i = blockIdx.x, h = blockIdx.y;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int kh = h / (heads / kvh);
    int last = start + i;
    const float* qr = q + ((size_t)i * heads + h) * hd;
    const float* kb = kc + (size_t)kh * cap * hd;
    const float* vb = vc + (size_t)kh * cap * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int t = 0; t < ATT_MAXD; t++) {
        int d = lane + t * WARP;
        qv[t] = d < hd ? qr[d] * scale : 0.f;
        acc[t] = 0.f;
    }
    float mx = NEG_INF, l = 0.f;
    for (int p0 = warp; p0 <= last; p0 += ATT_WARPS * ATT_POS) {
        // Issue every K and V load of this step first, so one memory latency
        // covers ATT_POS positions (decode is latency-bound, not bandwidth-bound).
        float kv[ATT_POS][ATT_MAXD], vv[ATT_POS][ATT_MAXD];
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            int p = p0 + j * ATT_WARPS;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) {
                int d = lane + t * WARP;
                bool ok = p <= last && d < hd;
                kv[j][t] = ok ? kb[(size_t)p * hd + d] : 0.f;
                vv[j][t] = ok ? vb[(size_t)p * hd + d] : 0.f;
            }
        }
        float s[ATT_POS];
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            float part = 0.f;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) part = fmaf(qv[t], kv[j][t], part);
            s[j] = part;
        }
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) s[j] = warp_sum(s[j]);
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            int p = p0 + j * ATT_WARPS;
            if (p > last) break;
            float mn = fmaxf(mx, s[j]);
            float corr = expf(mx - mn);
            float e = expf(s[j] - mn);
            l = l * corr + e;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) acc[t] = fmaf(acc[t], corr, e * vv[j][t]);
            mx = mn;
        }
    }
    if (lane == 0) {
        sm_m[warp] = mx;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < ATT_MAXD; t++) sm_acc[warp][lane + t * WARP] = acc[t];
    __syncthreads();
    float gm = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) gm = fmaxf(gm, sm_m[w]);
    float total = 0.f;
    for (int w = 0; w < ATT_WARPS; w++) total += sm_l[w] * expf(sm_m[w] - gm);
    float* o = out + ((size_t)i * heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) v += sm_acc[w][d] * expf(sm_m[w] - gm);
        o[d] = v / total;
    }
}

// head_dim <= 128: 8 positions per warp per step; head_dim <= 256: 4.
extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)
    attention_d128(const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
                   float* __restrict__ out, int heads, int kvh, int hd, int cap, int start, float scale) {
    attention_impl<4, 8>(q, kc, vc, out, heads, kvh, hd, cap, start, scale);
}

extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)
    attention_d256(const float* __restrict__ q, const float* __restrict__ kc, const float* __restrict__ vc,
                   float* __restrict__ out, int heads, int kvh, int hd, int cap, int start, float scale) {
    attention_impl<8, 4>(q, kc, vc, out, heads, kvh, hd, cap, start, scale);
}
