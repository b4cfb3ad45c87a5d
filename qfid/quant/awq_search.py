"""AWQ's two searches as pure tensor functions (Lin et al., MLSys 2024; AutoAWQ's behaviour).

Nothing here touches a module: candidates are new tensors and the caller scores them, so a
search can never leave a model half-scaled (the AutoAWQ 0.2.9 CPU bug this project measured:
its `.cpu()` "snapshot" aliased the weights it then scaled in place).

- Scale search: for alpha on a `grid`-point grid over [0, 1),
  `s = x_mean^alpha / w_mean^(1 - alpha)` per input channel ("duo scaling"), normalised by
  `sqrt(max(s) * min(s))`; each balance weight becomes `Q(W * s) / s` and the caller's loss
  scores the inspected module's output. The lowest loss wins (first one on ties).
- Clip search: per weight group, clamp to `max|w| * (1 - max_shrink * i / grid)` for
  i < grid (20 steps up to 50%: shrinks 0%, 2.5%, ..., 47.5%; AutoAWQ's 10 steps of 5% are
  every other one) and keep, per group, the clip with the lowest output error on the
  calibration inputs.
"""
from __future__ import annotations

from typing import Callable

import torch

from qfid.kernels.dispatch import int4_fake_quantize

CLIP_MAX_SHRINK = 0.5
CLIP_GRID = 20


# Rows a reduction or upcast over a large tensor takes at a time: [rows, width] fp32 pieces of
# at most 16 MB stay under glibc's mmap threshold (32 MB at most), so they come from the heap
# and are reused, and no temporary of the whole tensor's size is made (on an 8B block the
# gate+up weight means alone made 1.4 GB of temporaries, the peak of the whole block).
CHUNK_BYTES = 16 << 20


def chunk_rows(width: int) -> int:
    """Rows of a [rows, width] fp32 piece of CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * max(width, 1)))


def activation_means(x: torch.Tensor) -> torch.Tensor:
    """Mean |x| per input channel over all tokens ([tokens, in] -> [in]); summed in row
    chunks when x is larger than one (one chunk: exactly `x.abs().float().mean(0)`)."""
    rows = chunk_rows(x.shape[1])
    if x.shape[0] <= rows:
        return x.abs().float().mean(dim=0)
    return sum(part.abs().float().sum(dim=0) for part in x.split(rows)) / x.shape[0]


def weight_means(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over rows of |W| normalised by each group's max (AutoAWQ's `w_mean`): how large a
    channel's weights are relative to the group that shares its quantization step. Summed
    in row chunks when the weights are larger than one."""
    total_rows, width = sum(t.shape[0] for t in weights), weights[0].shape[1]
    if total_rows <= chunk_rows(width):
        return _relative_magnitudes(torch.cat([t.float() for t in weights], dim=0), group_size).mean(dim=0)
    total = torch.zeros(width)
    for t in weights:
        for part in t.split(chunk_rows(width)):
            total += _relative_magnitudes(part.float(), group_size).sum(dim=0)
    return total / total_rows


def _relative_magnitudes(w: torch.Tensor, group_size: int) -> torch.Tensor:
    groups = w.abs().reshape(-1, group_size)
    relative = groups / (groups.amax(dim=1, keepdim=True) + 1e-6)
    return relative.reshape(w.shape)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def scaled_candidates(weights: list[torch.Tensor], s: torch.Tensor, group_size: int,
                      out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """`Q(W * s) / s` for each weight: what the balance layers compute on unscaled inputs once
    s is folded and W * s is quantized. With `out` (one buffer per weight, reused across grid
    points, fp32 or the scoring dtype) nothing of the weights' size is allocated: on a large
    block fresh temporaries every grid point made the search spend 40% of its time in page
    faults. Built in fp32 and rounded once into out's dtype, by one fused pass where qfid's
    CPU kernel runs (kernels.dispatch.int4_fake_quantize)."""
    out = out if out is not None else [torch.empty_like(w, dtype=torch.float32) for w in weights]
    for w, buf in zip(weights, out):
        int4_fake_quantize(w, group_size, col_scale=s, out=buf)
    return out


def search_scale(x_mean: torch.Tensor, w_mean: torch.Tensor, weights: list[torch.Tensor],
                 group_size: int, grid: int, loss: Callable[[list[torch.Tensor]], float],
                 candidate_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """The per-channel scale with the lowest `loss(candidate weights)`, and that loss. The
    candidates reach `loss` in `candidate_dtype` (the scoring dtype: no cast left to do)."""
    best_s, best_loss = torch.ones_like(x_mean), float("inf")
    buffers = [torch.empty_like(w, dtype=candidate_dtype) for w in weights]
    for step in range(grid):
        s = candidate_scales(x_mean, w_mean, step / grid)
        value = loss(scaled_candidates(weights, s, group_size, buffers))
        if value < best_loss:
            best_s, best_loss = s, value
    return best_s, best_loss


def group_gram(x: torch.Tensor, group_size: int, chunk_rows: int | None = None) -> torch.Tensor:
    """Per-group input second moments [n_groups, G, G] = X_g^T X_g / tokens.

    A group's output error over the tokens is `d^T Gram_g d` for a weight error d, so the
    clip search scores every token at the cost of one small matmul per candidate, instead of
    materialising [out, tokens, groups, G] products as AutoAWQ does (it therefore samples 512
    tokens; this sees them all). Summed over `chunk_rows` tokens at a time (all at once by
    default), so no copy of x's size is made.
    """
    n, width = x.shape
    total = None
    for part in x.split(chunk_rows or max(n, 1)):
        xg = part.float().reshape(part.shape[0], width // group_size, group_size).transpose(0, 1)
        g = xg.transpose(1, 2) @ xg
        total = g if total is None else total.add_(g)
    return total / max(n, 1)


def group_output_error(delta: torch.Tensor, gram: torch.Tensor, group_size: int,
                       work: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared output error contributed by each group: [out, in] weight error -> [out, n_groups].
    `work` (a tensor of delta's size) holds the product, so a search loop allocates nothing large."""
    out_f, in_f = delta.shape
    d = delta.reshape(out_f, in_f // group_size, group_size).transpose(0, 1)   # [groups, out, G]
    product = torch.bmm(d, gram, out=None if work is None else work.view(d.shape))
    return product.mul_(d).sum(dim=-1).transpose(0, 1)


# Output rows the clip search takes at a time: its half-dozen passes per grid step (quantize,
# subtract, one small matmul per group, multiply, sum, compare) then run over a few MB that
# stay in cache instead of streaming the whole weight through memory each time. Rows are
# independent, so the picks are the same; measured on a 2-core Zen 4, an 8B's gate weight
# [14336, 4096] took 3.0 s instead of 4.7 s, bit for bit the same clips. A GPU takes the whole
# weight at once (its caches are not the point there; fewer launches are).
CLIP_CHUNK_BYTES = 4 << 20


def search_clip(w: torch.Tensor, gram: torch.Tensor, group_size: int,
                grid: int = CLIP_GRID, max_shrink: float = CLIP_MAX_SHRINK) -> torch.Tensor:
    """Per-group clip values [out, in/G] for `int4_quantize(w, G, clip)`, chosen on the output
    error over the calibration inputs whose `group_gram` is `gram` (both in the scaled basis).
    Searched CLIP_CHUNK_BYTES of rows at a time on a CPU."""
    w = w.float()
    out_f, in_f = w.shape
    max_abs = w.abs().reshape(out_f, in_f // group_size, group_size).amax(dim=-1)
    rows = max(1, CLIP_CHUNK_BYTES // (4 * in_f)) if w.device.type == "cpu" else out_f
    delta, work = w.new_empty(min(rows, out_f), in_f), w.new_empty(min(rows, out_f), in_f)
    return torch.cat([_search_clip_rows(w_rows, m_rows, gram, group_size, grid, max_shrink,
                                        delta[: w_rows.shape[0]], work[: w_rows.shape[0]])
                      for w_rows, m_rows in zip(w.split(rows), max_abs.split(rows))])


def _search_clip_rows(w: torch.Tensor, max_abs: torch.Tensor, gram: torch.Tensor, group_size: int,
                      grid: int, max_shrink: float, delta: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """`search_clip` on some rows of the weight, in the caller's buffers (`delta`, `work`:
    the rows' size)."""
    best_clip, best_err = max_abs.clone(), torch.full_like(max_abs, float("inf"))
    for step in range(grid):
        clip = max_abs * (1 - max_shrink * step / grid)
        int4_fake_quantize(w, group_size, clip, out=delta).sub_(w)
        err = group_output_error(delta, gram, group_size, work)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, clip, best_clip)
    return best_clip
