// Fused CFG + aux points: the native CUDA twin of kernels/aux_points.py::fused_aux_points.
// One thread owns V consecutive elements of one sample: it reads the five inputs once with 16-byte
// loads (plus one noise vector per stochastic path) and writes every (path, point) row of that sample
// with 16-byte stores, so HBM traffic is the minimum: inputs once, outputs once.
#include <math.h>
#include <stdio.h>

#include <algorithm>

#include "aux_points.h"

#ifndef SOAR_CUDA_ARCHS
#define SOAR_CUDA_ARCHS "unknown"
#endif

namespace soar {
namespace {

// 128 threads × V elements = the Triton kernel's 1024-element block over 4 warps; a 16×64×64 bf16
// batch of 4 then spans 256 blocks, enough to reach all 132 SMs of an H100/H200 (unmeasured).
constexpr int kThreads = 128;

template <int V, typename Tin, typename Tlat, typename Ttgt>
__global__ void __launch_bounds__(kThreads) fused_aux_points_kernel(const AuxArgs a) {
  const int64_t nvec = a.chw / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y)
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride)
      aux_points_vector<V, Tin, Tlat, Ttgt>(a, b, i * V);
}

struct DeviceRunner {
  cudaStream_t stream;
  template <int V, typename Tin, typename Tlat, typename Ttgt>
  int run(const AuxArgs& a) const {
    // One vector per thread, and no device query, so the launch is legal inside CUDA-graph capture.
    const int64_t nvec = a.chw / V;
    const dim3 grid(unsigned(std::min<int64_t>((nvec + kThreads - 1) / kThreads, INT32_MAX)),
                    unsigned(std::min<int64_t>(a.B, 65535)));
    fused_aux_points_kernel<V, Tin, Tlat, Ttgt><<<grid, kThreads, 0, stream>>>(a);
    return int(cudaGetLastError());
  }
};

struct HostRunner {
  template <int V, typename Tin, typename Tlat, typename Ttgt>
  int run(const AuxArgs& a) const {
    for (int64_t b = 0; b < a.B; ++b)
      for (int64_t e = 0; e < a.chw; e += V) aux_points_vector<V, Tin, Tlat, Ttgt>(a, b, e);
    return 0;
  }
};

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename Runner, typename Tin, typename Tlat, typename Ttgt>
int dispatch_vector(const Runner& r, const AuxArgs& a) {
  // Enough elements that every tensor moves whole 16-byte chunks: 4 when all are float32, 8 with bf16.
  constexpr int kVec = 16 / int(std::min({sizeof(Tin), sizeof(Tlat), sizeof(Ttgt)}));
  const bool vec = a.chw % kVec == 0 && aligned16(a.z_t0) && aligned16(a.v_u) && aligned16(a.v_c) &&
                   aligned16(a.z0) && aligned16(a.z1) && (a.noise == nullptr || aligned16(a.noise)) &&
                   aligned16(a.latents) && aligned16(a.targets);
  return vec ? r.template run<kVec, Tin, Tlat, Ttgt>(a) : r.template run<1, Tin, Tlat, Ttgt>(a);
}

template <typename Runner, typename Tin, typename Tlat>
int dispatch_target(const Runner& r, const AuxArgs& a, int target_dtype) {
  return target_dtype == SOAR_FLOAT32 ? dispatch_vector<Runner, Tin, Tlat, float>(r, a)
                                      : dispatch_vector<Runner, Tin, Tlat, bf16_t>(r, a);
}

template <typename Runner, typename Tin>
int dispatch_latent(const Runner& r, const AuxArgs& a, int lat_dtype, int target_dtype) {
  return lat_dtype == SOAR_FLOAT32 ? dispatch_target<Runner, Tin, float>(r, a, target_dtype)
                                   : dispatch_target<Runner, Tin, bf16_t>(r, a, target_dtype);
}

bool valid_dtype(int d) { return d == SOAR_FLOAT32 || d == SOAR_BFLOAT16; }

template <typename Runner>
int fused_aux_points(const Runner& r, const AuxArgs& a, int in_dtype, int lat_dtype, int target_dtype) {
  if (a.B < 0 || a.P < 1 || a.K < 0 || a.chw < 0 || a.kind < SOAR_ODE || a.kind > SOAR_CPS ||
      !valid_dtype(in_dtype) || !valid_dtype(lat_dtype) || !valid_dtype(target_dtype))
    return int(cudaErrorInvalidValue);
  if (a.B == 0 || a.K == 0 || a.chw == 0) return 0;
  if (!a.z_t0 || !a.v_u || !a.v_c || !a.z0 || !a.z1 || !a.sigma0 || !a.sigma1 || !a.sigma_prime ||
      !a.row_table || !a.latents || !a.targets || (a.P > 1 && a.kind != SOAR_ODE && !a.noise))
    return int(cudaErrorInvalidValue);
  return in_dtype == SOAR_FLOAT32 ? dispatch_latent<Runner, float>(r, a, lat_dtype, target_dtype)
                                  : dispatch_latent<Runner, bf16_t>(r, a, lat_dtype, target_dtype);
}

AuxArgs make_args(const void* z_t0, const void* v_u, const void* v_c, const void* z0, const void* z1,
                  const void* path_noise, const float* sigma0, const float* sigma1, const float* sigma_prime,
                  const int32_t* row_table, void* latents, void* targets, int64_t B, int64_t P, int64_t K,
                  int64_t chw, float cfg_scale, int kind, float noise_scale, float sigma_hat_at_one) {
  // sin in double on the host, as eager's math.sin on a Python float.
  const float cps_sin = float(sin(double(noise_scale) * M_PI / 2.0));
  const void* noise = (P > 1 && kind != SOAR_ODE) ? path_noise : nullptr;
  return AuxArgs{z_t0,      v_u,      v_c,     z0,   z1, noise, sigma0,    sigma1,      sigma_prime,
                 row_table, latents, targets, B,    P,  K,     chw,       cfg_scale,   kind,
                 noise_scale, sigma_hat_at_one, cps_sin};
}

}  // namespace
}  // namespace soar

extern "C" {

int soar_fused_aux_points(const void* z_t0, const void* v_u, const void* v_c, const void* z0, const void* z1,
                          const void* path_noise, const float* sigma0, const float* sigma1,
                          const float* sigma_prime, const int32_t* row_table, void* latents, void* targets,
                          int64_t B, int64_t P, int64_t K, int64_t chw, float cfg_scale, int kind,
                          float noise_scale, float sigma_hat_at_one, int in_dtype, int lat_dtype,
                          int target_dtype, void* stream) {
  const soar::AuxArgs a = soar::make_args(z_t0, v_u, v_c, z0, z1, path_noise, sigma0, sigma1, sigma_prime,
                                          row_table, latents, targets, B, P, K, chw, cfg_scale, kind,
                                          noise_scale, sigma_hat_at_one);
  return soar::fused_aux_points(soar::DeviceRunner{static_cast<cudaStream_t>(stream)}, a, in_dtype,
                                lat_dtype, target_dtype);
}

int soar_fused_aux_points_host(const void* z_t0, const void* v_u, const void* v_c, const void* z0,
                               const void* z1, const void* path_noise, const float* sigma0,
                               const float* sigma1, const float* sigma_prime, const int32_t* row_table,
                               void* latents, void* targets, int64_t B, int64_t P, int64_t K, int64_t chw,
                               float cfg_scale, int kind, float noise_scale, float sigma_hat_at_one,
                               int in_dtype, int lat_dtype, int target_dtype) {
  const soar::AuxArgs a = soar::make_args(z_t0, v_u, v_c, z0, z1, path_noise, sigma0, sigma1, sigma_prime,
                                          row_table, latents, targets, B, P, K, chw, cfg_scale, kind,
                                          noise_scale, sigma_hat_at_one);
  return soar::fused_aux_points(soar::HostRunner{}, a, in_dtype, lat_dtype, target_dtype);
}

int soar_kernels_abi_version(void) { return SOAR_KERNELS_ABI; }

const char* soar_kernels_version(void) {
  static char text[128];
  static const bool once = [] {
    snprintf(text, sizeof text, "soar_kernels abi %d, CUDA %d.%d, archs %s", SOAR_KERNELS_ABI,
             CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10, SOAR_CUDA_ARCHS);
    return true;
  }();
  (void)once;
  return text;
}

const char* soar_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
