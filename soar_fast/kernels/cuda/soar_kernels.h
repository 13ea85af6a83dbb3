/* C ABI of libsoar_kernels.so: raw pointers, sizes and a stream, so the library needs no torch
 * headers and loads with ctypes. Bump SOAR_KERNELS_ABI whenever a signature or code below changes;
 * kernels/cuda_aux.py refuses a library built for another ABI. */
#ifndef SOAR_KERNELS_H_
#define SOAR_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SOAR_KERNELS_ABI 1
#define SOAR_API __attribute__((visibility("default")))

enum SoarDtype { SOAR_FLOAT32 = 0, SOAR_BFLOAT16 = 1 };
enum SoarRolloutKind { SOAR_ODE = 0, SOAR_SIMPLE = 1, SOAR_SDE = 2, SOAR_FLOW_SDE = 3, SOAR_CPS = 4 };

/* Fused CFG + aux points (docs/objective.md §3, step 4), one pass over the inputs.
 * z_t0, v_u, v_c, z0, z1: (B, chw) in in_dtype. path_noise: (P-1, B, chw) in in_dtype, or NULL when
 * P == 1 or kind == SOAR_ODE. sigma0, sigma1: (B,) float32. sigma_prime: (N,) float32.
 * row_table: (B, P, K) int32, output row or -1 (left out); every row 0..N-1 must appear once.
 * latents: (N, chw) in lat_dtype; targets: (N, chw) in target_dtype. All pointers on one device.
 * Returns a cudaError_t code (0 = launched; cudaErrorInvalidValue = 1 for bad arguments). */
SOAR_API int soar_fused_aux_points(const void* z_t0, const void* v_u, const void* v_c, const void* z0,
                                   const void* z1, const void* path_noise, const float* sigma0,
                                   const float* sigma1, const float* sigma_prime, const int32_t* row_table,
                                   void* latents, void* targets, int64_t B, int64_t P, int64_t K,
                                   int64_t chw, float cfg_scale, int kind, float noise_scale,
                                   float sigma_hat_at_one, int in_dtype, int lat_dtype, int target_dtype,
                                   void* stream);

/* The same computation on host memory, running the kernel's per-vector body in a host loop: lets a
 * machine without a GPU check the kernel's arithmetic, indexing and vector/scalar paths. */
SOAR_API int soar_fused_aux_points_host(const void* z_t0, const void* v_u, const void* v_c, const void* z0,
                                        const void* z1, const void* path_noise, const float* sigma0,
                                        const float* sigma1, const float* sigma_prime,
                                        const int32_t* row_table, void* latents, void* targets, int64_t B,
                                        int64_t P, int64_t K, int64_t chw, float cfg_scale, int kind,
                                        float noise_scale, float sigma_hat_at_one, int in_dtype,
                                        int lat_dtype, int target_dtype);

SOAR_API int soar_kernels_abi_version(void);
/* "soar_kernels abi 1, CUDA 13.0, archs 80,90": for the loader's report; needs no GPU. */
SOAR_API const char* soar_kernels_version(void);
/* cudaGetErrorString of a code returned above. */
SOAR_API const char* soar_error_string(int code);

#ifdef __cplusplus
}
#endif
#endif /* SOAR_KERNELS_H_ */
