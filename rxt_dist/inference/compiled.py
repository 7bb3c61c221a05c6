"""A compiled decoding step: one token for every row of a batch through ``torch.compile``.

Shape legend: L layers, B rows, Nkv key/value heads, C cache capacity, H head dim, S memory
slots, D model dim, V vocabulary, E experts.

The eager step (:meth:`RxTModel.decode` on a :class:`KVCache`) runs a few hundred small
operations, each paying Python and dispatch overhead that dwarfs its arithmetic at these sizes.
The compiled step is the same computation written for a compiler: it reads the whole
preallocated cache (capacity C, masked past each row's length) so no shape depends on the
lengths, computes the rotary tables once, and lets inductor fuse the norms, rotations, masks and
residuals into a few kernels. The batch and the capacity are dynamic dimensions, so one
compilation serves every batch size above 1 (batch 1 gets its own). The step multiplies by a
copy of the decoder's weights laid out for its products (:class:`StepWeights`, in
:mod:`~rxt_dist.inference.step_weights`: transposed, the query, key and value projections side
by side). A mixture-of-experts FFN is compiled too, from a stacked copy of its expert weights:
one row indexes its chosen experts' weights; a batch runs each expert on the rows that chose it
only (:mod:`~rxt_dist.inference.experts`: the routing compiled, the experts' products one opaque
operator that inductor calls as it is). The computations themselves are in
:mod:`~rxt_dist.inference.steps`; this module compiles them and feeds them a cache.

Same weights and the same operations (the products' and the MoE's sums grouped differently):
greedy answers equal the eager path's (tests).
"""

from __future__ import annotations

import functools
import itertools
import logging
import platform
import threading
import types
from collections.abc import Callable

import torch
from torch import Tensor

from rxt_dist.inference.step_weights import StepWeights
from rxt_dist.inference.steps import consolidate_step, decode_step, prefill_step
from rxt_dist.model.kv_cache import KVCache
from rxt_dist.model.rxt import MemoryKV, RxTModel

logger = logging.getLogger(__name__)

StepFn = Callable[[Tensor, Tensor, list[Tensor], list[Tensor], MemoryKV, Tensor | None, list[Tensor]],
                  tuple[Tensor, Tensor]]
PrefillFn = Callable[[Tensor, Tensor, Tensor, list[Tensor], list[Tensor], Tensor | None, list[Tensor]],
                     tuple[Tensor, MemoryKV]]


def _mark_capacity_dynamic(cache: KVCache) -> None:
    """Mark the cache's capacity dynamic before a call: one graph for every capacity. A mark
    stays on its tensor, so only tensors new since the last step are marked (32 µs a step for
    `nano`'s 12 otherwise; the check reads where torch keeps the marks, and marks again
    should that place move)."""
    for t in (*cache.keys, *cache.values):
        if 2 not in getattr(t, "_dynamo_dynamic_indices", ()):
            torch._dynamo.mark_dynamic(t, 2)


def _mark_batch_dynamic(ids: Tensor, cache: KVCache, memory: MemoryKV, slot_mask: Tensor | None) -> None:
    """Mark the batch dimension of every input dynamic before a call: traced first at some
    batch size, the step would otherwise be specialised to it and compiled again for the next
    size."""
    mark = torch._dynamo.mark_dynamic
    mark(ids, 0)
    mark(cache.lengths, 0)
    for t in (*cache.keys, *cache.values):
        mark(t, 0)
    for k, v in memory:
        mark(k, 0)
        mark(v, 0)
    if slot_mask is not None:
        mark(slot_mask, 0)


@functools.cache
def warn_if_scalar_kernels() -> bool:
    """Log a WARNING, once per process, where inductor would compile this x86 or ARM CPU's
    kernels without vector instructions, and return whether it would.

    Inductor vectorises its C++ kernels only after a test library built for the CPU's vector
    instructions loads in a child Python, which inherits this process's ``sys.path``; where that
    child fails (a file named like a standard module beside the script, a broken compiler) every
    kernel silently comes out scalar, the compiled steps several times slower
    (docs/BENCHMARKS.md, "Decoding")."""
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return False
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
        scalar = not pick_vec_isa()
    except Exception:  # noqa: BLE001 - a private API that may move; the check is advice only
        return False
    if scalar:
        logger.warning("inductor found no usable vector instructions on this %s CPU: the compiled steps will run "
                       "scalar C++ kernels, several times slower. Its check loads a test library in a child Python "
                       "that inherits sys.path: look for a file named like a standard module (re.py, ctypes.py, ...) "
                       "in a folder on sys.path, or a C++ compiler that fails", platform.machine())
    return scalar


def _own_code(fn: Callable) -> Callable:
    """``fn`` on a copy of its code object with a name of its own. Dynamo keeps compiled graphs
    and their guards per code object, and what it has learnt about sizes per code *name* (file,
    line, name): with the lambdas shared, `tiny` compiled after `nano` in one process had every
    size that differs between them made dynamic — 44 more arguments to its batch-1 step, which
    took 0.75 ms where alone it takes 0.43 (docs/BENCHMARKS.md)."""
    code = fn.__code__
    code = code.replace(co_name=f"{code.co_name}_{next(_COMPILED)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_COMPILED = itertools.count()


def _compile(model: RxTModel, fn: Callable) -> Callable:
    """``fn`` through ``torch.compile`` (inductor) as the compiled steps need it.

    Sizes are constants but for the dimensions the calls mark dynamic (batch, capacity, prompt
    or interaction length). With ``dynamic=True`` every size was a symbol — the weights' too —
    and dynamo's duck sizing gave equal sizes one symbol: a model whose FFN width equalled the
    warm-up cache's capacity compiled again on its first longer answer. Constants also trace
    faster (cold compiles 16–27% shorter) and made `nano`'s batch-1 step 11–15% faster.

    On a CPU the graph's wrapper — the code that calls its ~100 kernels and products in turn —
    is C++ rather than Python (``cpp_wrapper``): 14–20% off a turn of `nano` and `debug` at
    batch 1, a cold compile about as long (`debug` −14%, `nano` +9%; docs/BENCHMARKS.md,
    "Decoding"). On a GPU the default wrapper stays (not measured there)."""
    cpu = model.embed.weight.device.type == "cpu"
    return torch.compile(_own_code(fn), dynamic=None, options={"cpp_wrapper": True} if cpu else None)


class CompiledDecoder:
    """The compiled :func:`prefill_step` and :func:`decode_step` of one model, and the way a
    :class:`KVCache` feeds them.

    Compiles on the first step of each new kind of shape (batch 1; any larger batch), which
    takes tens of seconds on a CPU; :meth:`warm_up` does that before the first request.

    A decoding step checks only its tensors' guards once its kind of call has been seen:
    dynamo's guards on everything else the step reads — the model's modules and constants, the
    weights' layout, some 1,500 checks for `nano` — cost ≈ 0.16 ms of a batch-1 step there
    (8%), most of it cache misses after the step has streamed its weights (docs/BENCHMARKS.md). The
    first call of each kind (batch 1 or more, with or without a memory mask, this weight
    layout, this many torch threads) runs every guard, compiling if needed; later calls of that
    kind run under ``skip_guard_eval_unsafe``, where dynamo still checks every input tensor's
    dtype, shape and strides and the guards that have told its graphs apart, and compiles when
    none matches. The step's graphs live on code objects of this decoder's own (:func:`_own_code`),
    so no other model's graph can be taken for its. Not checked again: process-wide state the
    call does not set itself (the grad mode it does: off) — an autocast region entered after a
    kind's first call, say, would leave the step decoding as it was compiled.
    """

    noun, verb = "decoding", "decoding"

    def __init__(self, model: RxTModel) -> None:
        if not isinstance(model, RxTModel):
            raise TypeError(f"compiled decoding is implemented for RxT models, not {type(model).__name__}")
        self.model = model
        self._lock = threading.Lock()
        self._weights = weights = StepWeights(model)
        step = lambda ids, lengths, keys, values, memory, mask, packs: decode_step(  # noqa: E731
            model, weights.layout, ids, lengths, keys, values, memory, mask, packs)
        # batch 1 and larger batches compile apart (batch 1 is specialised), each on a code
        # object of its own, so a step's graph is chosen by which function is called
        self._steps: dict[bool, StepFn] = {batched: _compile(model, step) for batched in (False, True)}
        self._checked: set[tuple] = set()
        self._prefill_fn: PrefillFn = _compile(
            model, lambda ids, lengths, stm, keys, values, mask, packs: prefill_step(
                model, weights.layout, ids, lengths, stm, keys, values, mask, packs))

    def refresh_weights(self) -> None:
        """Renew the step's weight copies if any weight has changed (:class:`StepWeights`);
        :meth:`prefill` does it, and a :class:`~rxt_dist.inference.DecodeBatch` whenever it
        admits rows without it."""
        with self._lock:
            self._weights.refresh()

    @torch.no_grad()
    def prefill(self, ids: Tensor, lengths: Tensor, stm: Tensor, memory_mask: Tensor | None,
                cache: KVCache) -> tuple[Tensor, MemoryKV]:
        """Prefill prompts ``ids`` (B, T) of ``lengths`` (B,) from ``stm`` (L, B, S, D) into
        the empty ``cache`` (advanced by ``lengths``); ``memory_mask`` (B, S) or None. Returns
        the logits of each prompt's next token (B, V) and the projected memory, as
        :func:`prefill_step`."""
        if cache.max_length():
            raise ValueError("the compiled prefill starts a turn: it needs an empty cache")
        B, T = ids.shape
        # room for the next token too: the step needs it, and a capacity never equal to the
        # prompt's length keeps one graph (the graph is traced with the two unequal)
        cache.reserve(T + 1)
        # an STM with autograd history (a learned initial STM) or other strides (a slice of a
        # batch's) would make a graph of its own
        stm = stm.detach().contiguous()
        mark = torch._dynamo.mark_dynamic
        mark(ids, 1)  # prompt lengths vary: one graph for all of them
        _mark_capacity_dynamic(cache)
        if B > 1:  # as :meth:`step`: every batch above 1 shares one graph. The cache's batch is
            # marked only here, as the step marks it: a mark left on a batch-1 cache would make
            # the step's batch-1 graph compile again for it
            for t in (ids, lengths, *cache.keys, *cache.values) + ((memory_mask,) if memory_mask is not None else ()):
                mark(t, 0)
            mark(stm, 1)
        with self._lock:
            self._weights.refresh()
            logits, memory = self._prefill_fn(ids, lengths, stm, cache.keys, cache.values, memory_mask,
                                               self._weights.packs)
        cache.advance(lengths)
        return logits, memory

    @torch.no_grad()
    def step(self, ids: Tensor, cache: KVCache, memory: MemoryKV,
             memory_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Decode ``ids`` (B, 1) after ``cache`` (advanced by one); returns the logits (B, V)
        and the greedy tokens (B,), their ``argmax``. The weights are as the last
        :meth:`prefill` or :meth:`refresh_weights` found them."""
        cache.reserve(cache.max_length() + 1)
        slot_mask = memory_mask[:, None, None, :] if memory_mask is not None else None  # (B, 1, 1, S)
        # One memory layout, so strides never make a new graph: a batch's memory is contiguous
        # already (DecodeBatch), the projection of a lone STM is a transposed view.
        memory = [(k.contiguous(), v.contiguous()) for k, v in memory]
        _mark_capacity_dynamic(cache)
        batched = ids.shape[0] > 1
        if batched:  # every batch above 1 shares one graph, whatever size came first
            _mark_batch_dynamic(ids, cache, memory, slot_mask)
        with self._lock:  # one compilation at a time
            kind = (batched, slot_mask is None, id(self._weights.layout), torch.get_num_threads())
            args = (ids, cache.lengths, cache.keys, cache.values, memory, slot_mask, self._weights.packs)
            if kind in self._checked:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    logits, greedy = self._steps[batched](*args)
            else:
                logits, greedy = self._steps[batched](*args)
                # kinds checked under another weight layout or thread count are checked again:
                # the guards they would skip are the ones that tell those graphs apart
                self._checked = {k for k in self._checked if k[2:] == kind[2:]} | {kind}
        cache.advance(1)
        return logits, greedy

    @torch.no_grad()
    def warm_up(self, batches: tuple[int, ...] = (1, 2)) -> None:
        """Compile the prefill and the step for these batch sizes now (on throwaway rows)."""
        model = self.model
        device = model.embed.weight.device
        if device.type == "cpu":
            warn_if_scalar_kernels()
        for batch in batches:
            stm = model.initial_stm(batch)
            ids = torch.zeros(batch, 5, dtype=torch.long, device=device)
            lengths = torch.tensor([5 - row % 2 for row in range(batch)], device=device)
            self.prefill(ids, lengths, stm, None, model.new_cache(batch))
            step_ids = torch.zeros(batch, 1, dtype=torch.long, device=device)  # strides as a batch's tokens
            self.step(step_ids, model.new_cache(batch), model.project_memory(stm), None)


class CompiledMemoryUpdate:
    """The compiled :func:`consolidate_step` of one model: a batch of interactions merged into
    their STMs as :meth:`RxTModel.consolidate` does, fused by inductor. The batch and the
    interaction length are dynamic dimensions (batch 1 compiles apart); :meth:`warm_up`
    compiles before the first update."""

    noun, verb = "memory update", "consolidating"

    def __init__(self, model: RxTModel) -> None:
        if not isinstance(model, RxTModel):
            raise TypeError(f"the compiled memory update is implemented for RxT models, not {type(model).__name__}")
        self.model = model
        self._lock = threading.Lock()
        self._fn: Callable[[Tensor, Tensor, Tensor], Tensor] = _compile(
            model, lambda stm, ids, lengths: consolidate_step(model, stm, ids, lengths))

    @torch.no_grad()
    def __call__(self, stm: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """STM (L, B, S, D) and right-padded interactions ``ids`` (B, T) of ``lengths`` (B,)
        → the new STM (L, B, S, D)."""
        stm = stm.detach().contiguous()  # as in :meth:`CompiledDecoder.prefill`
        mark = torch._dynamo.mark_dynamic
        mark(ids, 1)
        if ids.shape[0] > 1:
            mark(ids, 0)
            mark(lengths, 0)
            mark(stm, 1)
        with self._lock:
            return self._fn(stm, ids, lengths)

    @torch.no_grad()
    def warm_up(self, batches: tuple[int, ...] = (1, 2)) -> None:
        """Compile for these batch sizes now (on throwaway interactions)."""
        device = self.model.embed.weight.device
        if device.type == "cpu":
            warn_if_scalar_kernels()
        for batch in batches:
            ids = torch.zeros(batch, 6, dtype=torch.long, device=device)
            lengths = torch.tensor([6 - row % 2 for row in range(batch)], device=device)
            self(self.model.initial_stm(batch), ids, lengths)


Compiled = CompiledDecoder | CompiledMemoryUpdate


def compiled_or_eager(model: RxTModel, batches: tuple[int, ...] = (1, 2),
                      kind: type[Compiled] = CompiledDecoder) -> Compiled | None:
    """``kind`` (the compiled prefill and decoding step, or the compiled memory update) of
    ``model``, compiled now for ``batches``; ``None`` — run it eagerly — with a WARNING naming
    the reason where it cannot be had here: a model it does not cover, or a machine where
    inductor cannot compile (it needs a C++ compiler on CPU). Answers are the same either way;
    only the speed differs."""
    try:
        compiled = kind(model)
        compiled.warm_up(batches)
    except Exception as exc:  # noqa: BLE001 - inductor's failures have many types; each means "eager"
        first_line = (str(exc).strip().splitlines() or [""])[0]  # inductor's messages run to pages
        logger.warning("compiled %s unavailable, %s eagerly: %s: %s", kind.noun, kind.verb, type(exc).__name__,
                       first_line)
        return None
    return compiled
