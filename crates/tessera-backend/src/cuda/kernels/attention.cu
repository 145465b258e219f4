// ---------------------------------------------------------------- attention

// Store k, v ([n, kvh*hd] each, rows `k_stride` / `v_stride` floats apart, so
// they can be column views of the fused QKV product) at positions start.. of
// one layer's cache [kvh][cap][hd]. With `inv_freq` set, RoPE is applied to k
// on the way, row r at position rope_start + r (the same bits as the rope kernel).
// Both positions are offsets from *dpos when dpos is set (see step_pos).
// KV cache elements: f32, or bf16 bits (Backend::kv_cache_typed, KvDType::BF16:
// keys and values rounded to nearest even when stored, read back exactly).
__device__ __forceinline__ float kv_load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const unsigned short* p, size_t i) { return bf16_bits_to_f32(p[i]); }
__device__ __forceinline__ void kv_put(float* p, size_t i, float x) { p[i] = x; }
__device__ __forceinline__ void kv_put(unsigned short* p, size_t i, float x) { p[i] = f32_to_bf16_bits(x); }
// What a cache of element type KV gives back for x (new positions read from
// the QKV product must see the values their cache will hold).
template <typename KV> __device__ __forceinline__ float kv_round(float x);
template <> __device__ __forceinline__ float kv_round<float>(float x) { return x; }
template <> __device__ __forceinline__ float kv_round<unsigned short>(float x) {
    return bf16_bits_to_f32(f32_to_bf16_bits(x));
}

template <typename KV>
__device__ __forceinline__ void kv_store_impl(const float* __restrict__ k, int k_stride, const float* __restrict__ v,
                                              int v_stride, KV* __restrict__ kc, KV* __restrict__ vc, int n,
                                              int kvh, int hd, int cap, int start,
                                              const float* __restrict__ inv_freq, int rope_start,
                                              const int* __restrict__ dpos) {
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
    kv_put(kc, dst, inv_freq ? rope_elem(kh, d, hd, rope_start + row, inv_freq) : kh[d]);
    kv_put(vc, dst, v[(size_t)row * v_stride + rem]);
}

#define KV_STORE_ENTRY(NAME, KV)                                                                                 \
    extern "C" __global__ void NAME(const float* __restrict__ k, int k_stride, const float* __restrict__ v,      \
                                    int v_stride, KV* __restrict__ kc, KV* __restrict__ vc, int n, int kvh,     \
                                    int hd, int cap, int start, const float* __restrict__ inv_freq,             \
                                    int rope_start, const int* __restrict__ dpos) {                             \
        kv_store_impl<KV>(k, k_stride, v, v_stride, kc, vc, n, kvh, hd, cap, start, inv_freq, rope_start, dpos); \
    }
KV_STORE_ENTRY(kv_store, float)
KV_STORE_ENTRY(kv_store_bf16, unsigned short)

#define ATT_WARPS 8

// exp(m - gm), the weight of a partial result with running max m in one whose
// max is gm; 0 for an empty partial (m = -inf), also when every partial is
// empty (gm = -inf, where exp(m - gm) would be NaN).
__device__ __forceinline__ float att_rescale(float m, float gm) { return m == NEG_INF ? 0.f : expf(m - gm); }

// Causal GQA attention with an online softmax: block (i, h, s) computes query
// row i, head h over its share of positions 0..=start+i. Each warp folds a
// strided subset of the block's positions into its own (max, sum, acc); the
// warps are merged at the end. No score matrix is materialised, so memory
// stays O(head_dim) per block.
//
// Split positions (gridDim.z = S > 1, flash-decoding): a decode step has one
// or a few query rows, so rows x heads blocks alone leave most SMs idle and
// each block walks the whole context. Row i uses A = min(S, (start+i+1) /
// min_chunk) splits (at least 1; min_chunk <= 0: A = S), so a short context
// is not cut into chunks whose merge costs more than it saves; blocks with
// split >= A return at once. Split s takes the s-th of A equal chunks of
// 0..=start+i (A and the chunks computed here, from the position the step
// runs at, so a recorded step stays right as the context grows), writes its
// unnormalised (max, sum, acc) to `part`, and the last block of (i, h) to
// finish (a counter per (i, h) in `counters`, zero between launches: the
// last block resets it) merges the A partials into `out`.
// part: [rows*heads*S*hd] accumulators, then [rows*heads*S*2] (max, sum).
// With A = 1 the block writes `out` itself and touches neither.
//
// New positions (tail = 1, decode-sized launches): the positions start.. of
// this call's rows are folded in after the cached ones, one per warp at a
// time. With nk set, the KV store was deferred into this launch
// (cuda/attention.rs): new keys and values are read from nk / nv (rows nk_stride /
// nv_stride floats apart; RoPE on the keys with nk_inv, row r at position
// nk_rope_start + r), and block (r, first head of each KV group, split 0)
// writes row r's key and value into the cache through kw / vw, where no block
// of this launch reads them. Without nk they are read from the cache; the
// bits are the same either way. tail = 0 (prefill) folds every position in
// the main loop.
//
// q rows are `q_stride` floats apart (q may be a column view of the QKV
// product); with `inv_freq` set, RoPE is applied to q as it is loaded (row i
// at position rope_start + i). With dpos set, both positions are offsets from
// *dpos (see step_pos).
//
// Several sequences (seqs set; decode of a batch, cuda/attention.rs): row i
// is the one new token of its own sequence, whose cache, capacity and
// position come from seqs[4i .. 4i+3] (K cache base, V cache base, capacity,
// position; `layer` selects the layer): kc/vc/kw/vw, cap, start and both RoPE
// starts are that sequence's, and row i sits at offset 0 from its start
// instead of i. Needs tail = 1 and nk set (the new key and value are stored
// here), dpos null.
// KV: the cache's element type (float, or unsigned short for bf16 bits).
// ATT_MAXD: head_dim / 32 rounded up (registers per lane); ATT_POS: positions
// per warp per step, loaded together for memory-level parallelism.
template <typename KV, int ATT_MAXD, int ATT_POS>
__device__ __forceinline__ void attention_impl(const float* __restrict__ q, int q_stride,
                                               const KV* __restrict__ kc, const KV* __restrict__ vc,
                                               float* __restrict__ out, int heads, int kvh, int hd, int cap,
                                               int start, float scale, const float* __restrict__ inv_freq,
                                               int rope_start, const int* __restrict__ dpos,
                                               float* __restrict__ part, unsigned* __restrict__ counters,
                                               int tail, const float* __restrict__ nk, int nk_stride,
                                               const float* __restrict__ nv, int nv_stride,
                                               const float* __restrict__ nk_inv, int nk_rope_start, KV* kw,
                                               KV* vw, int min_chunk, const long long* __restrict__ seqs,
                                               int layer) {
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][ATT_MAXD * WARP];
    __shared__ float sm_q[ATT_MAXD * WARP];
    __shared__ int sm_last;
    KERNEL_PROLOGUE();
    const int base = step_pos(dpos);
    start += base;
    rope_start += base;
    nk_rope_start += base;
    const int i = blockIdx.x, h = blockIdx.y, split = blockIdx.z, stride_s = gridDim.z;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int kh = h / (heads / kvh);
    int ri = i; // the row's offset from `start` in its sequence
    if (seqs != nullptr) {
        const long long* e = seqs + 4 * (size_t)i;
        cap = (int)e[2];
        const size_t loff = (size_t)layer * kvh * cap * hd;
        kw = (KV*)e[0] + loff;
        vw = (KV*)e[1] + loff;
        kc = kw;
        vc = vw;
        start = rope_start = nk_rope_start = (int)e[3];
        ri = 0;
    }
    const int last = start + ri;
    // Splits row i uses (uniform over the block, so an early return is whole).
    const int splits = min_chunk > 0 ? max(1, min(stride_s, (last + 1) / min_chunk)) : stride_s;
    if (split >= splits) return;
    // This block's positions [lo, hi): the split-th of `splits` chunks of 0..=last.
    const int chunk = (last + splits) / splits;
    const int lo = split * chunk;
    const int hi = min(lo + chunk, last + 1);
    if (nk && split == 0 && h % (heads / kvh) == 0) {
        // Row i's new key and value into the cache (the deferred KV store).
        const float* nkr = nk + (size_t)i * nk_stride + (size_t)kh * hd;
        const float* nvr = nv + (size_t)i * nv_stride + (size_t)kh * hd;
        const size_t dst = ((size_t)kh * cap + start + ri) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            kv_put(kw, dst + d, nk_inv ? rope_elem(nkr, d, hd, nk_rope_start + ri, nk_inv) : nkr[d]);
            kv_put(vw, dst + d, nvr[d]);
        }
    }
    const float* qr = q + (size_t)i * q_stride + (size_t)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        sm_q[d] = inv_freq ? rope_elem(qr, d, hd, rope_start + ri, inv_freq) : qr[d];
    __syncthreads();
    const KV* kb = kc + (size_t)kh * cap * hd;
    const KV* vb = vc + (size_t)kh * cap * hd;
    float qv[ATT_MAXD], acc[ATT_MAXD];
#pragma unroll
    for (int t = 0; t < ATT_MAXD; t++) {
        int d = lane + t * WARP;
        qv[t] = d < hd ? sm_q[d] * scale : 0.f;
        acc[t] = 0.f;
    }
    float mx = NEG_INF, l = 0.f;
    const int main_hi = tail ? min(hi, start) : hi;
    for (int p0 = lo + warp; p0 < main_hi; p0 += ATT_WARPS * ATT_POS) {
        // Issue every K and V load of this step first, so one memory latency
        // covers ATT_POS positions (decode is latency-bound, not bandwidth-bound).
        float kv[ATT_POS][ATT_MAXD], vv[ATT_POS][ATT_MAXD];
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            int p = p0 + j * ATT_WARPS;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) {
                int d = lane + t * WARP;
                bool ok = p < main_hi && d < hd;
                kv[j][t] = ok ? kv_load(kb, (size_t)p * hd + d) : 0.f;
                vv[j][t] = ok ? kv_load(vb, (size_t)p * hd + d) : 0.f;
            }
        }
        float s[ATT_POS];
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            float part_s = 0.f;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) part_s = fmaf(qv[t], kv[j][t], part_s);
            s[j] = part_s;
        }
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) s[j] = warp_sum(s[j]);
#pragma unroll
        for (int j = 0; j < ATT_POS; j++) {
            int p = p0 + j * ATT_WARPS;
            if (p >= main_hi) break;
            float mn = fmaxf(mx, s[j]);
            float corr = expf(mx - mn);
            float e = expf(s[j] - mn);
            l = l * corr + e;
#pragma unroll
            for (int t = 0; t < ATT_MAXD; t++) acc[t] = fmaf(acc[t], corr, e * vv[j][t]);
            mx = mn;
        }
    }
    // The new positions of this block's range, one per warp at a time.
    for (int p = (tail ? max(lo, start) : hi) + warp; p < hi; p += ATT_WARPS) {
        const int r = p - start; // its row in nk: i - ri + r
        // From the QKV product (deferred store: rounded as the cache will
        // hold them) or from the cache.
        const float* kr = nk ? nk + (size_t)(i - ri + r) * nk_stride + (size_t)kh * hd : nullptr;
        const float* vr = nk ? nv + (size_t)(i - ri + r) * nv_stride + (size_t)kh * hd : nullptr;
        float kv[ATT_MAXD], vv[ATT_MAXD];
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) {
            int d = lane + t * WARP;
            bool ok = d < hd;
            if (!ok) {
                kv[t] = vv[t] = 0.f;
            } else if (nk) {
                kv[t] = kv_round<KV>(nk_inv ? rope_elem(kr, d, hd, nk_rope_start + r, nk_inv) : kr[d]);
                vv[t] = kv_round<KV>(vr[d]);
            } else {
                kv[t] = kv_load(kb, (size_t)p * hd + d);
                vv[t] = kv_load(vb, (size_t)p * hd + d);
            }
        }
        float sc = 0.f;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) sc = fmaf(qv[t], kv[t], sc);
        sc = warp_sum(sc);
        float mn = fmaxf(mx, sc);
        float corr = expf(mx - mn);
        float e = expf(sc - mn);
        l = l * corr + e;
#pragma unroll
        for (int t = 0; t < ATT_MAXD; t++) acc[t] = fmaf(acc[t], corr, e * vv[t]);
        mx = mn;
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
    for (int w = 0; w < ATT_WARPS; w++) total += sm_l[w] * att_rescale(sm_m[w], gm);
    const size_t ih = (size_t)i * heads + h;
    float* o = out + ih * hd;
    if (splits == 1) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float v = 0.f;
            for (int w = 0; w < ATT_WARPS; w++) v += sm_acc[w][d] * att_rescale(sm_m[w], gm);
            o[d] = v / total;
        }
        return;
    }
    // One of several splits: publish the partial, and merge if last.
    float* pacc = part + ih * stride_s * hd;
    float* pml = part + (size_t)gridDim.x * heads * stride_s * hd + ih * stride_s * 2;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; w++) v += sm_acc[w][d] * att_rescale(sm_m[w], gm);
        pacc[(size_t)split * hd + d] = v;
    }
    if (threadIdx.x == 0) {
        pml[split * 2] = gm;
        pml[split * 2 + 1] = total;
    }
    // Make this block's partial visible device-wide before counting it.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) sm_last = atomicAdd(&counters[ih], 1u) == (unsigned)(splits - 1);
    __syncthreads();
    if (!sm_last) return;
    __threadfence();
    // The last block: every other split's partial is visible. Read them past
    // L1 (written on other SMs).
    float m_all = NEG_INF;
    for (int s = 0; s < splits; s++) m_all = fmaxf(m_all, __ldcg(pml + s * 2));
    float t_all = 0.f;
    for (int s = 0; s < splits; s++) t_all += __ldcg(pml + s * 2 + 1) * att_rescale(__ldcg(pml + s * 2), m_all);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < splits; s++) v += __ldcg(pacc + (size_t)s * hd + d) * att_rescale(__ldcg(pml + s * 2), m_all);
        o[d] = v / t_all;
    }
    if (threadIdx.x == 0) counters[ih] = 0;
}

#define ATTENTION_ENTRY(NAME, KV, MAXD, POS)                                                                    \
    extern "C" __global__ void __launch_bounds__(ATT_WARPS * WARP)                                             \
        NAME(const float* __restrict__ q, int q_stride, const KV* __restrict__ kc, const KV* __restrict__ vc,  \
             float* __restrict__ out, int heads, int kvh, int hd, int cap, int start, float scale,             \
             const float* __restrict__ inv_freq, int rope_start, const int* __restrict__ dpos,                 \
             float* __restrict__ part, unsigned* __restrict__ counters, int tail, const float* __restrict__ nk, \
             int nk_stride, const float* __restrict__ nv, int nv_stride, const float* __restrict__ nk_inv,     \
             int nk_rope_start, KV* kw, KV* vw, int min_chunk, const long long* __restrict__ seqs, int layer) { \
        attention_impl<KV, MAXD, POS>(q, q_stride, kc, vc, out, heads, kvh, hd, cap, start, scale, inv_freq,   \
                                      rope_start, dpos, part, counters, tail, nk, nk_stride, nv, nv_stride,    \
                                      nk_inv, nk_rope_start, kw, vw, min_chunk, seqs, layer);                  \
    }
// head_dim <= 128: 8 positions per warp per step; head_dim <= 256: 4.
ATTENTION_ENTRY(attention_d128, float, 4, 8)
ATTENTION_ENTRY(attention_d256, float, 8, 4)
// bf16 caches.
ATTENTION_ENTRY(attention_bf16_d128, unsigned short, 4, 8)
ATTENTION_ENTRY(attention_bf16_d256, unsigned short, 8, 4)
