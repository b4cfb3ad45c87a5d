"""Layer shapes and weight-tuple helpers shared by the kernel benchmarks (CPU and GPU)."""
from __future__ import annotations

import torch

SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
BIG = {"4096x4096": (4096, 4096), "14336x4096": (14336, 4096), "4096x14336": (4096, 14336)}
DEFAULT_SHAPES = "smollm2,4096x4096,14336x4096,4096x14336"


def parse_shapes(spec: str) -> list[tuple[int, int, int]]:
    """(out, in, group): SmolLM2's shapes in groups of 64, the 4096-class layers of 128."""
    shapes = []
    for item in spec.split(","):
        if item == "smollm2":
            shapes += [(o, i, 64) for o, i in SMOLLM2]
        else:
            out_f, in_f = BIG.get(item) or tuple(int(v) for v in item.split("x"))
            shapes.append((out_f, in_f, 128 if in_f % 128 == 0 else 64))
    return shapes


def nbytes(obj) -> int:
    """Bytes of a tensor or of a (nested) tuple of them."""
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else sum(nbytes(o) for o in obj)


def clone(obj):
    return obj.clone() if isinstance(obj, torch.Tensor) else tuple(clone(o) for o in obj)
