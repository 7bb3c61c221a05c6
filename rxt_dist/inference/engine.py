"""The Ray-free inference core: answer from an STM, consolidate an interaction into it.

Shape legend: L layers, B conversations, S memory slots, D model dim, T tokens.

:class:`DecodeBatch` decodes many sequences together and admits new ones between steps
(the serving loop uses it directly); :func:`respond` and :func:`generate` are the plain
batched calls built on it; :func:`consolidate` is the memory update. The STM is always a
value passed in and returned.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rxt_dist.inference.compiled import CompiledDecoder, CompiledMemoryUpdate
from rxt_dist.inference.sampling import SamplingParams, sample_next
from rxt_dist.model.io import Model
from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.rxt import MemoryKV, RxTModel
from rxt_dist.tokens import EOS_ID, PAD_ID, interaction_ids, prompt_ids


def pad_batch(seqs: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad token lists → ids (B, T) and lengths (B,)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every sequence must hold at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids.to(device), lengths.to(device)


@dataclass
class TokenEvent:
    """One sequence's progress in a decoding step: a new token, or the end of the answer."""

    key: Hashable
    token: int | None
    """The new token; None when the sequence ended without one (end-of-answer sampled)."""
    finished: bool = False
    finish_reason: str | None = None
    """``stop`` (end-of-answer token) or ``length`` (``max_new_tokens`` reached)."""


@dataclass
class _Row:
    key: Hashable
    params: SamplingParams
    generator: torch.Generator | None
    generated: int = 0
    keep_cache: bool = False


@dataclass
class DecodeBatch:
    """Sequences decoded together; :meth:`admit` adds new ones between :meth:`step` calls.

    For an :class:`RxTModel` every sequence brings its own STM, projected to memory
    keys/values once at admission; for the stateless baseline, sequences are the whole
    history (or continue a kept cache).
    """

    model: Model
    eos_id: int = EOS_ID
    rows: list[_Row] = field(default_factory=list)
    cache: KVCache | None = None
    memory: MemoryKV | None = None
    memory_mask: Tensor | None = None
    last_tokens: Tensor | None = None
    kept_caches: dict[Hashable, KVCache] = field(default_factory=dict)
    compiled: CompiledDecoder | None = None
    """The prefill of new sequences and the decode steps through this compiled model (RxT
    only; a prefill that continues a given cache stays eager). Its weight copies are renewed
    at each admission, so weights changed in place while the batch decodes reach its steps at
    its next admission (:class:`~rxt_dist.inference.step_weights.StepWeights`)."""

    @property
    def is_rxt(self) -> bool:
        return isinstance(self.model, RxTModel)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def admit(
        self,
        keys: Sequence[Hashable],
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        stm: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
        keep_cache: bool = False,
    ) -> list[TokenEvent]:
        """Prefill new sequences and sample their first tokens.

        ``prompts`` are token lists (for RxT: ``[BOS][Q] query [A]``); ``stm`` (L, B, S, D) is
        required for RxT; ``memory_mask`` (B, S) hides slots; ``cache`` continues already
        cached tokens (a stateless conversation kept across turns); with ``keep_cache`` the
        cache of each finished sequence is kept in :attr:`kept_caches`.
        """
        if len({*keys, *(r.key for r in self.rows)}) != len(keys) + len(self.rows):
            raise ValueError("every sequence in a DecodeBatch needs a distinct key")
        device = self.model.embed.weight.device
        ids, lengths = pad_batch(prompts, device)
        new_cache = cache if cache is not None else self.model.new_cache(len(prompts))
        if self.is_rxt and stm is None:
            raise ValueError("an RxT model answers from an STM: pass stm=(L, B, S, D)")
        if self.is_rxt and stm.shape[1] != len(prompts):
            raise ValueError(f"stm holds {stm.shape[1]} conversations but {len(prompts)} prompts were given")
        if self.is_rxt and self.compiled is not None and cache is None:
            last, memory = self.compiled.prefill(ids, lengths, stm.to(device), memory_mask, new_cache)
        else:
            if self.compiled is not None:  # the steps' weight copies, as the compiled prefill renews them
                self.compiled.refresh_weights()
            if self.is_rxt:
                memory = self.model.project_memory(stm.to(device))
                hidden, _ = self.model.decode_hidden(ids, lengths, memory, memory_mask, new_cache)
            else:
                memory = None
                hidden, _ = self.model.hidden(ids, lengths, new_cache)
            # the head only where a token is sampled: the prompt's other positions need no logits
            last = self.model.lm_logits(hidden[torch.arange(len(prompts), device=device), lengths - 1])  # (B, V)
        rows = [_Row(k, p, p.generator(), keep_cache=keep_cache) for k, p in zip(keys, params)]
        last, _ = self._without_eos(last, None, rows)
        tokens = sample_next(last, [r.params for r in rows], [r.generator for r in rows])
        self._merge(rows, new_cache, memory, memory_mask, tokens)
        return self._advance(tokens, first_row=len(self.rows) - len(rows))

    def _merge(self, rows, cache, memory, memory_mask, tokens) -> None:
        if not self.rows:
            if memory is not None:  # one layout for every batch (the projection is a transposed view)
                memory = [(k.contiguous(), v.contiguous()) for k, v in memory]
            self.rows, self.cache, self.memory, self.last_tokens = rows, cache, memory, tokens
            self.memory_mask = memory_mask
            return
        self.cache = KVCache.cat([self.cache, cache])
        if self.is_rxt:
            self.memory = [
                (torch.cat([k0, k1]), torch.cat([v0, v1]))
                for (k0, v0), (k1, v1) in zip(self.memory, memory)
            ]
            self.memory_mask = _cat_masks(self.memory_mask, memory_mask, len(self.rows), len(rows),
                                          self.memory[0][0].shape[2])
        self.rows = self.rows + rows
        self.last_tokens = torch.cat([self.last_tokens, tokens])

    @torch.no_grad()
    def step(self) -> list[TokenEvent]:
        """Decode one token for every sequence in the batch."""
        if not self.rows:
            return []
        ids = self.last_tokens[:, None]  # (B, 1)
        greedy = None
        if self.compiled is not None:
            logits, greedy = self.compiled.step(ids, self.cache, self.memory, self.memory_mask)  # (B, V), (B,)
        elif self.is_rxt:
            logits = self.model.decode(ids, None, self.memory, self.memory_mask, self.cache)[0][:, -1]
        else:
            logits = self.model.decode(ids, None, self.cache)[0][:, -1]
        logits, greedy = self._without_eos(logits, greedy, self.rows)
        tokens = sample_next(logits, [r.params for r in self.rows], [r.generator for r in self.rows], greedy)
        return self._advance(tokens, first_row=0)

    def _without_eos(self, logits: Tensor, greedy: Tensor | None, rows: Sequence[_Row]
                     ) -> tuple[Tensor, Tensor | None]:
        """``logits`` (B, V) with the end-of-answer token ruled out for the rows that ignore it
        (``SamplingParams.ignore_eos``), and ``greedy`` (the compiled step's argmax) taken again
        for those rows; as given when no row ignores it."""
        ignoring = [i for i, r in enumerate(rows) if r.params.ignore_eos]
        if not ignoring:
            return logits, greedy
        at = torch.tensor(ignoring, device=logits.device)
        logits = logits.clone()
        logits[at, self.eos_id] = float("-inf")
        if greedy is not None:
            greedy = greedy.clone()
            greedy[at] = logits[at].argmax(dim=-1)
        return logits, greedy

    def _advance(self, tokens: Tensor, first_row: int) -> list[TokenEvent]:
        """Turn sampled tokens of rows ``first_row:`` into events and retire finished rows."""
        events, keep = [], list(range(first_row))
        for offset, token in enumerate(tokens.tolist()):
            i = first_row + offset
            row = self.rows[i]
            if token == self.eos_id:
                events.append(TokenEvent(row.key, None, True, "stop"))
            else:
                row.generated += 1
                done = row.generated >= row.params.max_new_tokens
                events.append(TokenEvent(row.key, token, done, "length" if done else None))
            if events[-1].finished:
                if row.keep_cache:
                    self.kept_caches[row.key] = self.cache.select([i])
            else:
                keep.append(i)
        self.last_tokens[first_row:] = tokens
        if len(keep) != len(self.rows):
            self._retain(keep)
        return events

    def remove(self, keys: Sequence[Hashable]) -> None:
        """Drop unfinished sequences (a client went away); the others decode on unchanged."""
        gone = set(keys)
        keep = [i for i, row in enumerate(self.rows) if row.key not in gone]
        if len(keep) != len(self.rows):
            self._retain(keep)

    def _retain(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.memory = self.memory_mask = self.last_tokens = None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.last_tokens.device)
        self.cache = self.cache.select(idx)
        self.last_tokens = self.last_tokens.index_select(0, idx)
        if self.memory is not None:
            self.memory = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.memory]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, idx)


def _cat_masks(a: Tensor | None, b: Tensor | None, rows_a: int, rows_b: int, slots: int) -> Tensor | None:
    if a is None and b is None:
        return None
    ref = a if a is not None else b
    full = lambda n: torch.ones(n, slots, dtype=torch.bool, device=ref.device)  # noqa: E731
    return torch.cat([a if a is not None else full(rows_a), b if b is not None else full(rows_b)])


def _as_list(sampling: SamplingParams | Sequence[SamplingParams], n: int) -> list[SamplingParams]:
    if isinstance(sampling, SamplingParams):
        return [sampling] * n
    if len(sampling) != n:
        raise ValueError(f"got {len(sampling)} sampling settings for {n} conversations")
    return list(sampling)


def respond(
    model: RxTModel,
    query_ids: Sequence[Sequence[int]],
    stm: Tensor,
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    memory_mask: Tensor | None = None,
    compiled: CompiledDecoder | None = None,
) -> Iterator[list[int | None]]:
    """Answer B queries (token lists without special tokens) from their STM (L, B, S, D).

    Yields, per decoding step, the new token of each conversation, or None for a
    conversation whose answer has ended; stops when all have ended. The STM keys/values
    are projected once; self-attention uses a KV cache; with ``compiled`` the decoding steps
    run through that compiled step.
    """
    if stm.shape[1] != len(query_ids):
        raise ValueError(f"stm holds {stm.shape[1]} conversations but {len(query_ids)} queries were given")
    batch = DecodeBatch(model, compiled=compiled)
    params = _as_list(sampling, len(query_ids))
    yield from _drive(batch, batch.admit(list(range(len(query_ids))), [prompt_ids(q) for q in query_ids],
                                         params, stm=stm, memory_mask=memory_mask), len(query_ids))


def respond_stateless(
    model: Model,
    histories: Sequence[Sequence[int]],
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
) -> Iterator[list[int | None]]:
    """The stateless baseline's ``respond``: each sequence is the full history ending in the
    new prompt (see :func:`rxt_dist.tokens.history_ids`)."""
    batch = DecodeBatch(model)
    params = _as_list(sampling, len(histories))
    yield from _drive(batch, batch.admit(list(range(len(histories))), histories, params), len(histories))


def _drive(batch: DecodeBatch, events: list[TokenEvent], n: int) -> Iterator[list[int | None]]:
    live = set(range(n))
    while live:
        step: list[int | None] = [None] * n
        for ev in events:
            step[ev.key] = ev.token
            if ev.finished:
                live.discard(ev.key)
        yield step
        events = batch.step() if live else []


def collect(stream: Iterator[list[int | None]], n: int) -> list[list[int]]:
    """Gather a token stream from :func:`respond` into one answer per conversation."""
    answers: list[list[int]] = [[] for _ in range(n)]
    for step in stream:
        for i, tok in enumerate(step):
            if tok is not None:
                answers[i].append(tok)
    return answers


def generate(
    model: RxTModel,
    query_ids: Sequence[Sequence[int]],
    stm: Tensor,
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    memory_mask: Tensor | None = None,
    compiled: CompiledDecoder | None = None,
) -> list[list[int]]:
    """:func:`respond`, collected into whole answers."""
    return collect(respond(model, query_ids, stm, sampling, memory_mask, compiled), len(query_ids))


@torch.no_grad()
def consolidate(
    model: RxTModel,
    stm: Tensor,
    query_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    compiled: CompiledMemoryUpdate | None = None,
) -> Tensor:
    """Merge each conversation's interaction into its STM: (L, B, S, D) → (L, B, S, D); with
    ``compiled``, through that compiled memory update (the same STM, to rounding)."""
    if not (stm.shape[1] == len(query_ids) == len(answer_ids)):
        raise ValueError(f"stm holds {stm.shape[1]} conversations, got {len(query_ids)} queries "
                         f"and {len(answer_ids)} answers")
    device = model.embed.weight.device
    ids, lengths = pad_batch([interaction_ids(q, a) for q, a in zip(query_ids, answer_ids)], device)
    if compiled is not None:
        return compiled(stm.to(device), ids, lengths)
    return model.consolidate(stm.to(device), ids, lengths)


@torch.no_grad()
def system_prompt_stm(model: RxTModel, prompt: Sequence[Sequence[int]], generator: torch.Generator | None = None) -> Tensor:
    """STM (L, B, S, D) of new conversations whose memory starts from an encoded system prompt
    (consolidated as an interaction with an empty answer)."""
    fresh = model.initial_stm(len(prompt), generator)
    return consolidate(model, fresh, prompt, [[] for _ in prompt])
