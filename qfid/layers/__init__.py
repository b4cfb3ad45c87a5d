"""The runtime's layers, above `kernels` and below `engine` (as nano-vllm's layers/): the
attention backends over the paged KV cache, RMSNorm, RoPE, concatenated Linears, the
packed bf16 Linear, SwiGLU and sparse-MoE MLPs, and the Llama-family forward built from a
loaded transformers model. Every kernel choice here is made once, through kernels.dispatch."""
