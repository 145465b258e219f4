// ---------------------------------------------------------------- attention

// Store k, v ([n, kvh*hd] each, rows `k_stride` / `v_stride` floats apart, so
// they can be column views of the fused QKV product) at positions start.. of
// one layer's cache [kvh][cap][hd]. With `inv_freq` set, RoPE is applied to k
// on the way, row r at position rope_start + r (the same bits as the rope kernel).
// Both positions are offsets from *dpos when dpos is set (see step_pos).
extern "C" __global__ void kv_store(const float* __restrict__ k, int k_stride, const float* __restrict__ v,
                                    int v_stride, float* __restrict__ kc, float* __restrict__ vc, int n, int kvh,
                                    int hd, int cap, int start, const float* __restrict__ inv_freq,
                                    int rope_start, const int* __restrict__ dpos) {
    KERNEL_PROLOGUE();
    const int base = step_pos(dpos);
    start += base;
    rope_start += base;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    int width = kvh * hd;
    if (i >= (long long)n * width) return;
    int row = i / width, rem = i % width;
    int h = rem / hd, d = rem % hd;
    const float* kh = k + (size_t)row * k_stride + (size_t)h * hd;
    size_t dst = ((size_t)h * cap + start + row) * hd + d;
    kc[dst] = inv_freq ? rope_elem(kh, d, hd, rope_start + row, inv_freq) : kh[d];
    vc[dst] = v[(size_t)row * v_stride + rem];
}

#define ATT_WARPS 8

// Causal GQA attention with an online softmax: block (i, h) computes query row
// i, head h over positions 0..=start+i. Each warp folds a strided subset of the
// positions into its own (max, sum, acc); the warps are merged at the end. No
// score matrix is materialised, so memory stays O(head_dim) per block.
// q rows are `q_stride` floats apart (q may be a column view of the QKV
// product); with `inv_freq` set, RoPE is applied to q as it is loaded (row i
// at position rope_start + i). With dpos set, both positions are offsets from
// *dpos (see step_pos).
// ATT_MAXD: head_dim / 32 rounded up (registers per lane); ATT_POS: positions
// per warp per step, loaded together for memory-level parallelism.
template <int ATT_MAXD, int ATT_POS>
__device__ __forceinline__ void attention_impl(const float* __restrict__ q, int q_stride,
                                               const float* __restrict__ kc, const float* __restrict__ vc,
                                               float* __restrict__ out, int heads, int kvh, int hd, int cap,
                                               int start, float scale, const float* __restrict__ inv_freq,
                                               int rope_start, const int* __restrict__ dpos) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAXD * WARP];
    __shared__ float sm_q[ATT_MAXD * WARP];
    KERNEL_PROLOGUE();
    const int base = step_pos(dpos);
    start += base;
    rope_start += base;
    int i = blockIdx.x, h = blockIdx.y;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int kh = h / (heads / kvh);
    int last = start + i;
    const float* qr = q + (size_t)i * q_stride + (size_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        sm_q[d] = inv_freq ? rope_elem(qr, d, hd, rope_start + i, inv_freq) : qr[d];
    __syncthreads();
    const float* kb = kc + (size_t)kh * cap * hd;
    const float* vb = vc + (size_t)kh * cap * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int t = 0; t < ATT_MAXD; t++) {
        int d = lane + t * WARP;
        qv[t] = d < hd ? sm_q[d] * scale : 0.f;
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

#define ATTENTION_ENTRY(NAME, MAXD, POS)                                                                        \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                             \
        NAME(const float* __restrict__ q, int q_stride, const float* __restrict__ kc,                          \
             const float* __restrict__ vc, float* __restrict__ out, int heads, int kvh, int hd, int cap,       \
             int start, float scale, const float* __restrict__ inv_freq, int rope_start,                       \
             const int* __restrict__ dpos) {                                                                   \
        attention_impl<MAXD, POS>(q, q_stride, kc, vc, out, heads, kvh, hd, cap, start, scale, inv_freq,       \
                                  rope_start, dpos);                                                           \
    }
// head_dim <= 128: 8 positions per warp per step; head_dim <= 256: 4.
ATTENTION_ENTRY(attention_d128, 4, 8)
ATTENTION_ENTRY(attention_d256, 8, 4)
