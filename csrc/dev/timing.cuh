// Shared pieces of the kernel-variant lab: which variants a run takes, and timing (the median
// of `iters` launches, each bracketed by CUDA events: device time, no host clock, after the
// caller's warm-up).
#pragma once

#include "../common.cuh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// Variants 1..last_variant, or the one named as argv[1]; those from first_sm90 on need an
// sm_90 GPU and are dropped, with a line saying so, on any other.  false: none is left to run.
// argv[1] = "count" prints last_variant and exits (bench/gpu_all.sh runs each variant in a
// process of its own, so that a hang in one loses only that one); a variant out of range exits 2.
inline bool lab_variants(int argc, char** argv, int last_variant, int first_sm90, int* first, int* last) {
  *first = 1;
  *last = last_variant;
  if (argc > 1 && std::string(argv[1]) == "count") {
    printf("%d\n", last_variant);
    exit(0);
  }
  if (argc > 1) {
    *first = *last = atoi(argv[1]);
    if (*first < 1 || *first > last_variant) {
      fprintf(stderr, "no variant '%s': this lab has variants 1-%d\n", argv[1], last_variant);
      exit(2);
    }
  }
  int major = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major != 9 && *last >= first_sm90) {
    printf("variants %d-%d need an sm_90 GPU (this one is sm_%d0): skipped\n", first_sm90, last_variant, major);
    *last = first_sm90 - 1;
  }
  return *first <= *last;
}

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
