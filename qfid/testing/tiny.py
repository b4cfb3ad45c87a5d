"""Tiny random Llama / Mixtral checkpoints with a small byte-level BPE tokenizer, built
in-process so tests never need the hub. Deterministic given the seed.

Random init (std 0.02) makes every channel alike, which hides what AWQ is for; `outliers`
scales a few hidden channels of each norm so activations have the heavy channels real
models have.
"""
from __future__ import annotations

from pathlib import Path

_CORPUS = (
    "The quarterly revenue rose 12.5% to $1,234,567 while costs fell. "
    "The tenant shall pay rent on the first day of each month unless the landlord agrees otherwise. "
    "Der Vertrag endet am 31. Dezember. El precio subió un 3,5 por ciento. "
    "1 2 3 4 5 6 7 8 9 10 100 1000 question answer: yes no true false. "
) * 4
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _add_outlier_channels(model, n_channels: int = 4, factor: float = 12.0, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight"):
            idx = torch.randperm(p.shape[0], generator=g)[:n_channels]
            p.data[idx] *= factor


def _save(model, tokenizer, path: Path) -> Path:
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_llama(path, hidden: int = 256, intermediate: int = 512, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, vocab_size: int = 512, seed: int = 0, outliers: bool = True) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
        max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    if outliers:
        _add_outlier_channels(model, seed=seed)
    return _save(model, tokenizer, path)


def make_tiny_mixtral(path, hidden: int = 128, intermediate: int = 256, layers: int = 2, heads: int = 4,
                      kv_heads: int = 2, experts: int = 4, top_k: int = 2, vocab_size: int = 512, seed: int = 0) -> Path:
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size)
    config = MixtralConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
        num_local_experts=experts, num_experts_per_tok=top_k, max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = MixtralForCausalLM(config).eval()
    _add_outlier_channels(model, seed=seed)
    return _save(model, tokenizer, path)
