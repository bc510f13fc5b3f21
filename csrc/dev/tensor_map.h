// Host side of the lab's TMA attention kernels (attention_sm90_lab.cuh): the tensor map a kernel
// reads Q, K, V or dO through, or reduces dQ into.  Lab code: the extension ships no TMA kernel.
#pragma once

#include "../common.cuh"

#include <cuda.h>          // CUtensorMap and its enums (the types only: no -lcuda)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

namespace flopscale {
namespace attn {

// A 2-D (rows, cols) view of a row-major matrix of elem_bytes-byte elements (all B * H heads
// stacked), read or written in boxes of box_rows rows x 128 bytes with the 128-byte swizzle;
// rows past the end read as zeros, and writes there are dropped.  The encoder comes from the
// driver through the runtime's entry point query, so nothing links libcuda.
inline CUtensorMap encode_map_128b(const void* base, CUtensorMapDataType dtype, int elem_bytes, int64_t rows,
                                   int cols, int box_rows) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  if (encode == nullptr) {
    cudaDriverEntryPointQueryResult found;
    FS_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode),
                                                   12000, cudaEnableDefault, &found));
    FS_REQUIRE(found == cudaDriverEntryPointSuccess && encode != nullptr,
               "the driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12 or newer)");
  }
  FS_REQUIRE(reinterpret_cast<uintptr_t>(base) % 16 == 0, "attention: TMA needs 16-byte aligned tensors");
  FS_REQUIRE(rows > 0 && rows < (int64_t(1) << 31), "attention: B * H * T out of the tensor map's range");
  FS_REQUIRE(box_rows > 0 && box_rows <= 256, "attention: a TMA box has at most 256 rows");
  CUtensorMap map;
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)cols * elem_bytes};  // bytes between rows
  const cuuint32_t box[2] = {(cuuint32_t)(128 / elem_bytes), (cuuint32_t)box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(&map, dtype, 2, const_cast<void*>(base), dims, strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FS_REQUIRE(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed with CUresult " + std::to_string((int)r));
  return map;
}

// Q, K, V or dO, (rows, D) fp16 / bf16: boxes of box_rows rows x 64 columns, the layout the
// wgmma descriptors read (attention_sm90_lab.cuh's tma_tile).
inline CUtensorMap tile_map(const void* base, int64_t rows, int D, bool bf16, int box_rows = 128) {
  return encode_map_128b(base, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, rows, D,
                         box_rows);
}

// The fp32 dQ accumulator, (rows, D): boxes of box_rows rows x 32 columns, reduced into by
// attention_sm90_lab.cuh's tma_reduce_add_f32.
inline CUtensorMap tile_map_f32(float* base, int64_t rows, int D, int box_rows) {
  return encode_map_128b(base, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, rows, D, box_rows);
}

}  // namespace attn
}  // namespace flopscale
