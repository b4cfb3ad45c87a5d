// The paged decode attention and KV store (kernels/cpu/paged_attention.cpp) on checked
// arguments, into outputs the caller allocated: the ops run them after their checks, and
// the captured decode step (decode_layers.cpp) calls them straight, checking the step's
// lengths and slots once for all its layers.
#pragma once

#include <ATen/ATen.h>

namespace qfid_cpu {

// Every context length in [1, max_tokens]; lens int64, contiguous.
void check_context_lens(const at::Tensor& lens, int64_t max_tokens);
// out [seqs, heads, dim] = attention of q over the paged caches; q, caches and tables
// contiguous, lens int64 (checked).
void decode_attention_rows(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& tables, const at::Tensor& lens, const at::Tensor& out, double scale);
// Every slot in [0, slots); slot int64, contiguous.
void check_slots(const at::Tensor& slot, int64_t slots);
// k, v [tokens, kv_heads, dim] (dense heads) into their cache slots (int64, checked).
void store_kv_rows(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& slot);

}  // namespace qfid_cpu
