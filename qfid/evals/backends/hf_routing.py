"""Expert routing of a transformers MoE model (Mixtral, Qwen-MoE, ...) for the HF backend.

transformers returns every MoE layer's router logits when asked (`output_router_logits`),
flattened over the batch as [batch * width, experts]. The experts a token goes to are the
top-k of their softmax taken in fp32, which is what the model's router computes itself and
what qfid's runtime router (qfid/layers/moe.py `SparseMoE.route`) computes, so both backends
record the same ids. Models are recognised by what their config declares (router logits
and experts per token), not by class name.
"""
from __future__ import annotations

from qfid.evals.backends.base import ExpertRouting


def experts_per_token(config) -> int | None:
    """k for a model whose forward can return router logits, else None (a dense model)."""
    k = getattr(config, "num_experts_per_tok", None)
    return int(k) if k and hasattr(config, "output_router_logits") else None


def batch_routing(model, ids, mask, k: int) -> list[ExpertRouting]:
    """Routing of each right-padded row (its real tokens only) from one forward pass; the LM
    head runs on one position only, since no logits are needed."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True, logits_to_keep=1)
        chosen = torch.stack([logits.view(*ids.shape, -1).float().softmax(dim=-1).topk(k, dim=-1).indices
                              for logits in out.router_logits], dim=1).cpu()  # [rows, layers, width, k]
    lengths = mask.sum(dim=1).tolist()
    return [ExpertRouting(ids=chosen[row, :, :length].flatten(1).tolist(), k=k) for row, length in enumerate(lengths)]
