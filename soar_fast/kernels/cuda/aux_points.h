// Per-vector body of the fused aux-point kernel (docs/objective.md §3, step 4). Everything here is
// __host__ __device__ so soar_fused_aux_points_host can run the very same code on a CPU in tests.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "soar_kernels.h"

namespace soar {

// bf16 as raw bits: conversions are written out so host and device round identically (nearest-even,
// as torch does); the device uses the one-instruction cvt where the chip has it.
struct bf16_t {
  uint16_t bits;
};

__host__ __device__ __forceinline__ float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

__host__ __device__ __forceinline__ float to_f32(float x) { return x; }
__host__ __device__ __forceinline__ float to_f32(bf16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }

template <typename T>
__host__ __device__ __forceinline__ T from_f32(float x);

template <>
__host__ __device__ __forceinline__ float from_f32<float>(float x) { return x; }

template <>
__host__ __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return bf16_t{h};
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{0x7fc0};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
#endif
}

// One 16-byte chunk as float4 / uint4. The device uses the vector intrinsics because nvcc 13 split
// a plain `*(float4*)p = v` into four 32-bit stores inside the row loop (seen in the PTX).
template <typename V4>
__host__ __device__ __forceinline__ V4 load16(const void* p) {
#ifdef __CUDA_ARCH__
  return __ldg(static_cast<const V4*>(p));
#else
  return *static_cast<const V4*>(p);
#endif
}
template <typename V4>
__host__ __device__ __forceinline__ void store16(void* p, V4 v) {
#ifdef __CUDA_ARCH__
  __stcg(static_cast<V4*>(p), v);  // write-back at L2, the default for stores; the intrinsic keeps v4
#else
  *static_cast<V4*>(p) = v;
#endif
}

__host__ __device__ __forceinline__ void load_chunk(const float* p, float* x) {
  const float4 u = load16<float4>(p);
  x[0] = u.x, x[1] = u.y, x[2] = u.z, x[3] = u.w;
}
__host__ __device__ __forceinline__ void load_chunk(const bf16_t* p, float* x) {
  const uint4 u = load16<uint4>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // little-endian: element 2i in the low half
    x[2 * i] = bits_to_float(w[i] << 16);
    x[2 * i + 1] = bits_to_float(w[i] & 0xffff0000u);
  }
}
__host__ __device__ __forceinline__ void store_chunk(float* p, const float* x) {
  store16(p, make_float4(x[0], x[1], x[2], x[3]));
}
__host__ __device__ __forceinline__ void store_chunk(bf16_t* p, const float* x) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = uint32_t(from_f32<bf16_t>(x[2 * i]).bits) | (uint32_t(from_f32<bf16_t>(x[2 * i + 1]).bits) << 16);
  store16(p, make_uint4(w[0], w[1], w[2], w[3]));
}

// V elements at p: whole 16-byte chunks when V·sizeof(T) allows (the caller checked alignment),
// else scalar accesses (the V == 1 fallback path).
template <int V, typename T>
__host__ __device__ __forceinline__ void load(const T* __restrict__ p, float (&x)[V]) {
  constexpr int kc = 16 / sizeof(T);
  if constexpr (V % kc == 0) {
#pragma unroll
    for (int c = 0; c < V / kc; ++c) load_chunk(p + c * kc, x + c * kc);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = to_f32(p[j]);
  }
}

template <int V, typename T>
__host__ __device__ __forceinline__ void store(T* __restrict__ p, const float (&x)[V]) {
  constexpr int kc = 16 / sizeof(T);
  if constexpr (V % kc == 0) {
#pragma unroll
    for (int c = 0; c < V / kc; ++c) store_chunk(p + c * kc, x + c * kc);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = from_f32<T>(x[j]);
  }
}

struct AuxArgs {
  const void* z_t0;
  const void* v_u;
  const void* v_c;
  const void* z0;
  const void* z1;
  const void* noise;  // (P-1, B, chw) or null
  const float* sigma0;
  const float* sigma1;
  const float* sigma_prime;
  const int32_t* row_table;
  void* latents;
  void* targets;
  int64_t B, P, K, chw;
  float cfg_scale;
  int kind;
  float noise_scale;
  float sigma_hat_at_one;
  float cps_sin;  // sin(η·π/2), computed once on the host in double
};

// Per-sample scalars of one stochastic rollout step (docs/objective.md §4), grouped in
// the same order as kernels/cfg_rollout.py::rollout_math so the three backends round alike.
// Δ = σ1 − σ0 < 0.
struct StepCoef {
  float s0, s1, delta;
  float noise;  // simple: η·sqrt(|Δ|); flow_sde: std·sqrt(max(−Δ,0)); cps: std
  float fz, fv;  // flow_sde: mean = z·fz + v·fv, fv already times Δ
  float cps_x1;  // cps: sqrt(max(σ1² − std², 0))
};

__host__ __device__ __forceinline__ StepCoef step_coef(const AuxArgs& a, float s0, float s1) {
  StepCoef c{};
  c.s0 = s0;
  c.s1 = s1;
  c.delta = s1 - s0;
  const float eta = a.noise_scale;
  if (a.kind == SOAR_SIMPLE) {
    c.noise = eta * sqrtf(fabsf(c.delta));
  } else if (a.kind == SOAR_FLOW_SDE) {
    const float s_hat = (s0 == 1.0f) ? a.sigma_hat_at_one : s0;
    const float sd = eta * sqrtf(s0 / (1.0f - s_hat));
    const float var = sd * sd;
    c.fz = 1.0f + var / (2.0f * s0) * c.delta;
    c.fv = (1.0f + var * (1.0f - s0) / (2.0f * s0)) * c.delta;
    c.noise = sd * sqrtf(fmaxf(-c.delta, 0.0f));
  } else if (a.kind == SOAR_CPS) {
    const float sd = s1 * a.cps_sin;
    c.noise = sd;
    c.cps_x1 = sqrtf(fmaxf(s1 * s1 - sd * sd, 0.0f));
  }
  return c;
}

__host__ __device__ __forceinline__ float rollout(int kind, const StepCoef& c, float z, float v, float eps) {
  switch (kind) {
    case SOAR_SIMPLE:
      return z + v * c.delta + c.noise * eps;
    case SOAR_SDE:
      return (1.0f - c.s1) * (z - c.s0 * v) + c.s1 * eps;
    case SOAR_FLOW_SDE:
      return z * c.fz + v * c.fv + c.noise * eps;
    case SOAR_CPS:
      return (1.0f - c.s1) * (z - c.s0 * v) + c.cps_x1 * (z + (1.0f - c.s0) * v) + c.noise * eps;
    default:  // SOAR_ODE
      return z + v * c.delta;
  }
}

// Elements [e, e+V) of sample b: each input read once, every (path, point) row of the sample written.
template <int V, typename Tin, typename Tlat, typename Ttgt>
__host__ __device__ __forceinline__ void aux_points_vector(const AuxArgs& a, int64_t b, int64_t e) {
  const int64_t in_off = b * a.chw + e;
  float zt[V], vu[V], vc[V], x0[V], x1[V], v[V];
  load<V>(static_cast<const Tin*>(a.z_t0) + in_off, zt);
  load<V>(static_cast<const Tin*>(a.v_u) + in_off, vu);
  load<V>(static_cast<const Tin*>(a.v_c) + in_off, vc);
  load<V>(static_cast<const Tin*>(a.z0) + in_off, x0);
  load<V>(static_cast<const Tin*>(a.z1) + in_off, x1);
#pragma unroll
  for (int j = 0; j < V; ++j) v[j] = vu[j] + a.cfg_scale * (vc[j] - vu[j]);

  const float s0 = a.sigma0[b], s1 = a.sigma1[b];
  const float inv_span = 1.0f / fmaxf(1.0f - s1, 1e-8f);
  const StepCoef coef = step_coef(a, s0, s1);
  const int32_t* rows = a.row_table + b * a.P * a.K;

  for (int64_t p = 0; p < a.P; ++p, rows += a.K) {
    bool any = false;
    for (int64_t k = 0; k < a.K; ++k) any |= rows[k] >= 0;
    if (!any) continue;  // a sample left out of this stochastic path: its noise is never read

    float zp[V];
    if (p == 0 || a.kind == SOAR_ODE) {
#pragma unroll
      for (int j = 0; j < V; ++j) zp[j] = zt[j] + v[j] * coef.delta;
    } else {
      float eps[V];
      load<V>(static_cast<const Tin*>(a.noise) + ((p - 1) * a.B + b) * a.chw + e, eps);
#pragma unroll
      for (int j = 0; j < V; ++j) zp[j] = rollout(a.kind, coef, zt[j], v[j], eps[j]);
    }

    for (int64_t k = 0; k < a.K; ++k) {
      const int64_t row = rows[k];
      if (row < 0) continue;
      const float sp = a.sigma_prime[row];
      const float inv_sp = 1.0f / sp;
      const float alpha = fminf(fmaxf((sp - s1) * inv_span, 0.0f), 1.0f);
      float lat[V], tgt[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        lat[j] = (1.0f - alpha) * zp[j] + alpha * x1[j];
        tgt[j] = (lat[j] - x0[j]) * inv_sp;  // times 1/σ', as the Triton kernel and its eager twin
      }
      store<V>(static_cast<Tlat*>(a.latents) + row * a.chw + e, lat);
      store<V>(static_cast<Ttgt*>(a.targets) + row * a.chw + e, tgt);
    }
  }
}

}  // namespace soar
