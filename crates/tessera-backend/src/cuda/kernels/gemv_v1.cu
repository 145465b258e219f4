// ---------------------------------------------------------------- int8 GEMV, variant v1

// v1: the first streaming GEMV (H100, 2026-11-26: 1.7-2.4 TB/s at one
// activation row). Kept unchanged as the baseline the other variants are
// measured and checked against; see gemv.cu for the shared numerics contract.

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
                            y[(size_t)b * rows_out + row0 + r] = silu_mul(a[r][b], u[r][b]);
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
        KERNEL_PROLOGUE();                                                                                   \
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
GEMV_ENTRY(gemv_i8_16, 16, 1, 2)
