// Timing for the kernel-variant lab: the median of `iters` launches, each bracketed by CUDA
// events (device time, no host clock), after the caller's warm-up.
#pragma once

#include "../common.cuh"

#include <algorithm>
#include <vector>

template <typename Launch>
double median_ms(Launch launch, int iters) {
  cudaEvent_t e0, e1;
  FS_CUDA_CHECK(cudaEventCreate(&e0));
  FS_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int it = 0; it < iters; ++it) {
    FS_CUDA_CHECK(cudaEventRecord(e0));
    launch();
    FS_CUDA_CHECK(cudaEventRecord(e1));
    FS_CUDA_CHECK(cudaEventSynchronize(e1));
    float t;
    FS_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  FS_CUDA_CHECK(cudaEventDestroy(e0));
  FS_CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
