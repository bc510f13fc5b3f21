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

// Which variants a run takes, from argv:
//   (none)        every variant of `all` (the lab's numbers, csrc/dev/README.md)
//   N             variant N alone (bench/gpu_all.sh runs each in a process of its own, so that a
//                 hang or a trap in one loses only that one); a number not in `all` exits 2
//   list          prints `all` (space-separated) and exits
//   N check       variant N, validation only (no timing: for compute-sanitizer)
// Variants from first_sm90 on need an sm_90 GPU and are dropped, with a line saying so, on any
// other.  An empty `variants` means none is left to run.
struct LabRun {
  std::vector<int> variants;
  bool time = true;
};
inline LabRun lab_variants(int argc, char** argv, const std::vector<int>& all, int first_sm90) {
  LabRun run;
  if (argc > 1 && std::string(argv[1]) == "list") {
    for (size_t i = 0; i < all.size(); ++i) printf(i ? " %d" : "%d", all[i]);
    printf("\n");
    exit(0);
  }
  run.variants = all;
  if (argc > 1) {
    const int v = atoi(argv[1]);
    if (std::find(all.begin(), all.end(), v) == all.end()) {
      fprintf(stderr, "no variant '%s' in this lab (`%s list` prints them)\n", argv[1], argv[0]);
      exit(2);
    }
    run.variants = {v};
  }
  if (argc > 2) {
    if (std::string(argv[2]) != "check") {
      fprintf(stderr, "unknown argument '%s' (expected: check)\n", argv[2]);
      exit(2);
    }
    run.time = false;
  }
  int major = 0;
  FS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major != 9) {
    std::vector<int> kept;
    for (int v : run.variants) {
      if (v < first_sm90) kept.push_back(v);
      else printf("variant %d needs an sm_90 GPU (this one is sm_%d0): skipped\n", v, major);
    }
    run.variants = kept;
  }
  return run;
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
