"""A draft model as the speculative proposer: a smaller model sharing the target's tokenizer
(offline, with no smaller SmolLM2: qfid's own INT4 checkpoint of a model drafts for its
16-bit self) decodes k tokens greedily per step.

It keeps its own paged KV cache and, per target sequence, a mirror sequence in it. Before
each proposal the mirror is synced to the target's tokens: its computed prefix is kept as
far as it agrees with them (drafts the target accepted keep their K/V), the rest is
recomputed in the first draft forward, and blocks past the tokens are released. Drafting is
greedy, so the draft distribution q is one-hot at each draft and verification's rejection
sampling stays exact. A mirror is freed when its target sequence finishes; a draft that
does not fit in the draft cache is simply not proposed.

Each proposal runs one sequence at a time (k draft forwards per sequence per step): the
draft cost grows with the batch, which is one more reason speculation stops above
`speculative_max_batch`.
"""
from __future__ import annotations

from qfid.engine.block_manager import BlockManager
from qfid.engine.kv_cache import num_kv_blocks
from qfid.engine.loader import load_model_and_tokenizer
from qfid.engine.model_runner import ModelRunner
from qfid.engine.sampling import SamplingParams
from qfid.engine.scheduler import ScheduledBatch
from qfid.engine.sequence import Sequence
from qfid.errors import QfidError
from qfid.layers.model import build_runtime_model

_GREEDY = SamplingParams(max_tokens=1 << 30, temperature=0.0, ignore_eos=True)


class DraftModelProposer:
    def __init__(self, model_path: str, config, target_model, max_model_len: int):
        device = target_model.device if target_model is not None else "cpu"
        hf_model, _, _ = load_model_and_tokenizer(model_path, config.dtype, device)
        self.model = build_runtime_model(hf_model, config.attention, config.enforce_eager)
        del hf_model
        if target_model is not None and self.model.embed_tokens.num_embeddings != target_model.embed_tokens.num_embeddings:
            raise QfidError(f"draft model {model_path} has a vocabulary of {self.model.embed_tokens.num_embeddings} "
                            f"tokens, the served model {target_model.embed_tokens.num_embeddings}: they must share the tokenizer")
        blocks = num_kv_blocks(self.model, config, max_model_len)
        self.block_manager = BlockManager(blocks, config.block_size, enable_prefix_caching=False)
        self.runner = ModelRunner(self.model, blocks, config.block_size, config.max_num_seqs, max_model_len,
                                  use_graphs=False)
        self.k = config.num_speculative_tokens
        self.mirrors: dict[int, Sequence] = {}

    def propose(self, seq: Sequence, limit: int) -> list[int]:
        k = min(self.k, limit)
        if k <= 0:
            return []
        mirror = self._synced(seq)
        drafts: list[int] = []
        while len(drafts) < k:
            pending = mirror.num_uncomputed_tokens
            if not self.block_manager.can_allocate(mirror, pending):
                break
            self.block_manager.allocate(mirror, pending)
            batch = ScheduledBatch()
            batch.add(mirror, pending)
            (token,) = self.runner.run(batch).token_ids
            mirror.num_computed_tokens += pending
            mirror.append_token(token)
            drafts.append(token)
        return drafts

    def release(self, seq: Sequence) -> None:
        mirror = self.mirrors.pop(seq.seq_id, None)
        if mirror is not None:
            self.block_manager.free(mirror)

    def _synced(self, seq: Sequence) -> Sequence:
        """The target's mirror holding exactly its tokens, K/V kept for the agreeing prefix."""
        mirror = self.mirrors.get(seq.seq_id)
        if mirror is None:
            mirror = self.mirrors[seq.seq_id] = Sequence(list(seq.token_ids), _GREEDY, seq_id=seq.seq_id)
            return mirror
        agree = 0
        limit = min(mirror.num_computed_tokens, len(seq.token_ids) - 1)   # the last token is always recomputed
        while agree < limit and mirror.token_ids[agree] == seq.token_ids[agree]:
            agree += 1
        mirror.token_ids = list(seq.token_ids)
        mirror.num_computed_tokens = agree
        self.block_manager.trim(mirror)
        return mirror
