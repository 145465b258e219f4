// Tessera CUDA kernels, compiled at run time by NVRTC (see cuda/module.rs).
//
// Everything is f32 except int8 weights, so results match the CPU backend on
// the same weights up to summation order. No headers are included: NVRTC then
// needs no include path at all.
//
// Int8 weights: `q` is [m, kp] int8 (kp = k rounded up to 16, padding is zero),
// `scales` is [m, gpr] f32 with one scale per `group` inputs of a row
// (tessera_model::INT8_GROUP, passed at launch; the GEMV needs a power of two >= 16).

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
                                        int gpr, int group, float* __restrict__ out) {
    int i = blockIdx.x;
    unsigned id = ids ? ids[i] : id0;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[(size_t)i * hidden + c] = (float)q[(size_t)id * kp + c] * scales[(size_t)id * gpr + c / group];
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
extern "C" __global__ void quantize_i8(const float* __restrict__ w, int m, int k, int kp, int gpr, int group,
                                       signed char* __restrict__ q, float* __restrict__ scales) {
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

// Dequantize to an f32 [m, k] scratch matrix (for cuBLAS when n is large).
extern "C" __global__ void dequantize_i8(const signed char* __restrict__ q, const float* __restrict__ scales, int m,
                                         int k, int kp, int gpr, int group, float* __restrict__ out) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * k) return;
    int r = i / k, c = i % k;
    out[i] = (float)q[(size_t)r * kp + c] * scales[(size_t)r * gpr + c / group];
}

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

#define GEMV_WARPS 8 // warps per block

// Weight rows row0 .. row0+valid (valid <= R) against the NB (>= n) activation
// rows: acc[r][b] = sum_g scale[row0+r, g] * sum_{c in g} q[row0+r, c] * x[b, c],
// reduced over the warp (every lane gets the sums). Each lane keeps U*R
// 16-byte weight loads in flight; with one activation row the x chunk is
// loaded once and reused for the R weight rows, which cuts the L1 traffic
// that otherwise caps the stream.
template <int NB, int R, int U>
__device__ __forceinline__ void gemv_rows(const signed char* __restrict__ q, const float* __restrict__ scales,
                                          const float* __restrict__ x, int row0, int valid, int k, int kp,
                                          int gpr, int gshift, int n, float (&acc)[R][NB]) {
    int lane = threadIdx.x % WARP;
    const bool vec_x = (k % 4) == 0;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[r][b] = 0.f;
    int chunks = kp / 16;
    for (int base = lane; base < chunks; base += WARP * U) {
        int4 wv[U][R];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                int ch = base + u * WARP;
                wv[u][r] = (ch < chunks && r < valid) ? __ldg((const int4*)(q + (size_t)(row0 + r) * kp) + ch)
                                                      : make_int4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int ch = base + u * WARP;
            if (ch >= chunks) break;
            int c = ch * 16;
            float s[R];
#pragma unroll
            for (int r = 0; r < R; r++) s[r] = r < valid ? __ldg(scales + (size_t)(row0 + r) * gpr + (c >> gshift)) : 0.f;
#pragma unroll
            for (int b = 0; b < NB; b++) {
                if (b >= n) break;
                const float* xb = x + (size_t)b * k + c;
                float xr[16];
                if (vec_x && c + 16 <= k) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float4 xv = __ldg((const float4*)xb + j);
                        xr[4 * j] = xv.x;
                        xr[4 * j + 1] = xv.y;
                        xr[4 * j + 2] = xv.z;
                        xr[4 * j + 3] = xv.w;
                    }
                } else {
                    // Ragged tail (or unaligned x): padding weights are zero, guard x.
#pragma unroll
                    for (int e = 0; e < 16; e++) xr[e] = (c + e < k) ? xb[e] : 0.f;
                }
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float wf[16];
                    unpack4(wv[u][r].x, wf);
                    unpack4(wv[u][r].y, wf + 4);
                    unpack4(wv[u][r].z, wf + 8);
                    unpack4(wv[u][r].w, wf + 12);
                    float d = 0.f;
#pragma unroll
                    for (int e = 0; e < 16; e++) d = fmaf(wf[e], xr[e], d);
                    acc[r][b] = fmaf(s[r], d, acc[r][b]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[r][b] = warp_sum(acc[r][b]);
}

// W8A16-style product x [n, k] @ w[m, k]^T with a fused epilogue:
//   mode 0: y[n, m]  = product
//   mode 1: y[n, m] += product            (residual add fused in)
//   mode 2: y[n, m/2] = silu(p[:, :m/2]) * p[:, m/2:]   (SwiGLU fused in; the
//           warp computes gate rows r.. and up rows r + m/2..)
// Products are identical in every mode, so fusing changes no result bit.
// Warps stride over groups of R output rows (a grid of a few blocks per SM
// keeps loads flowing instead of churning through thousands of tiny blocks).
template <int NB, int R, int U>
__device__ __forceinline__ void gemv_i8(const signed char* __restrict__ q, const float* __restrict__ scales,
                                        const float* __restrict__ x, float* __restrict__ y, int m, int k, int kp,
                                        int gpr, int gshift, int n, int mode) {
    int lane = threadIdx.x % WARP;
    int rows_out = mode == 2 ? m / 2 : m;
    int groups = (rows_out + R - 1) / R;
    int stride = gridDim.x * GEMV_WARPS;
    for (int g = blockIdx.x * GEMV_WARPS + threadIdx.x / WARP; g < groups; g += stride) {
        int row0 = g * R;
        int valid = min(R, rows_out - row0);
        float a[R][NB];
        gemv_rows<NB, R, U>(q, scales, x, row0, valid, k, kp, gpr, gshift, n, a);
        if (mode == 2) {
            float u[R][NB];
            gemv_rows<NB, R, U>(q, scales, x, row0 + rows_out, valid, k, kp, gpr, gshift, n, u);
            if (lane == 0)
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        if (r < valid && b < n)
                            y[(size_t)b * rows_out + row0 + r] = a[r][b] / (1.0f + expf(-a[r][b])) * u[r][b];
        } else if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int b = 0; b < NB; b++)
                    if (r < valid && b < n) {
                        size_t i = (size_t)b * m + row0 + r;
                        y[i] = mode == 1 ? y[i] + a[r][b] : a[r][b];
                    }
        }
    }
}

#define GEMV_ENTRY(NAME, NB, R, U)                                                                           \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * WARP) NAME(                                   \
        const signed char* __restrict__ q, const float* __restrict__ scales, const float* __restrict__ x,    \
        float* __restrict__ y, int m, int k, int kp, int gpr, int gshift, int n, int mode) {                \
        gemv_i8<NB, R, U>(q, scales, x, y, m, k, kp, gpr, gshift, n, mode);                                  \
    }
// One activation row (decode): 1, 2 or 4 weight rows per warp, 8 loads in flight per lane.
GEMV_ENTRY(gemv_i8_1_r1, 1, 1, 8)
GEMV_ENTRY(gemv_i8_1_r2, 1, 2, 4)
GEMV_ENTRY(gemv_i8_1_r4, 1, 4, 2)
// A few activation rows: one weight row per warp.
GEMV_ENTRY(gemv_i8_2, 2, 1, 4)
GEMV_ENTRY(gemv_i8_4, 4, 1, 4)
GEMV_ENTRY(gemv_i8_8, 8, 1, 4)

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
