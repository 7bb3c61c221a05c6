"""Configuration of the RxT model family and the stateless baseline.

One dataclass per component, each validated in ``__post_init__``: a bad value raises
``ValueError`` naming the field, the value and the fix. The top-level configs
(:class:`RxTConfig`, :class:`StatelessConfig`) round-trip through plain dicts
(``to_dict``/``from_dict``) for ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from rxt_dist.tokens import NUM_SPECIAL

MEMORY_ATTENTION_VARIANTS = ("simple", "self", "interlayer", "gated_self_interlayer", "self_interlayer")
GATE_KINDS = ("static", "elementwise", "linear", "slot_mean", "none")
GATE_ACTIVATIONS = ("sigmoid", "tanh")
STM_INITS = ("normal", "zeros", "learned")
MEMORY_WRITES = ("attention", "competitive", "competitive_keep")
FFN_KINDS = ("dense", "moe")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive(name: str, value: int | float) -> None:
    _require(value >= 1, f"{name}={value}: must be ≥ 1")


@dataclass
class AttentionConfig:
    """Multi-head attention with MHA, GQA and Sparse Query Attention (SQA) as special cases.

    ``head_dim = dim // num_heads``. MHA: query and key/value heads both ``num_heads``.
    GQA: fewer key/value heads than query heads. SQA: fewer *query* heads than
    ``num_heads`` (the score FLOPs fall with the query-head count; the head size does not
    change), with key/value heads ≤ query heads.
    """

    num_heads: int = 4
    """Reference head count; fixes the head size ``dim // num_heads``."""
    num_query_heads: int | None = None
    """Query heads; ``None`` means ``num_heads``. Fewer than ``num_heads`` is SQA."""
    num_kv_heads: int | None = None
    """Key/value heads; ``None`` means the query-head count. Fewer is GQA."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding."""
    out_bias: bool = False
    """A bias on the output projection (checkpoints of the reference implementation ``rxlm``
    have one)."""

    def __post_init__(self) -> None:
        _positive("num_heads", self.num_heads)
        q = self.query_heads
        kv = self.kv_heads
        _require(1 <= q <= self.num_heads,
                 f"num_query_heads={q}: must be between 1 and num_heads={self.num_heads}")
        _require(1 <= kv <= q,
                 f"num_kv_heads={kv}: must be between 1 and the query heads ({q}); "
                 "SQA reduces query heads, GQA reduces key/value heads below them")
        _require(q % kv == 0,
                 f"num_kv_heads={kv}: must divide the query heads ({q}) so each key/value head "
                 "serves a whole group of query heads")
        _require(self.rope_theta > 0, f"rope_theta={self.rope_theta}: must be > 0")

    @property
    def query_heads(self) -> int:
        return self.num_heads if self.num_query_heads is None else self.num_query_heads

    @property
    def kv_heads(self) -> int:
        return self.query_heads if self.num_kv_heads is None else self.num_kv_heads

    def head_dim(self, dim: int) -> int:
        return dim // self.num_heads


@dataclass
class FFNConfig:
    """Feed-forward block: dense SwiGLU or a top-k routed Mixture of SwiGLU experts."""

    kind: Literal["dense", "moe"] = "dense"
    """``dense`` (one SwiGLU) or ``moe`` (``num_experts`` SwiGLUs, ``top_k`` per token)."""
    hidden_dim: int = 512
    """Hidden width of each SwiGLU."""
    num_experts: int = 1
    """Experts in a ``moe`` block (must be 1 for ``dense``)."""
    top_k: int = 1
    """Experts each token is routed to."""
    aux_loss_weight: float = 0.01
    """Weight of the load-balancing loss the MoE block returns."""
    bias: bool = False
    """Biases on the SwiGLU projections (checkpoints of the reference implementation ``rxlm``
    have them)."""

    def __post_init__(self) -> None:
        _require(self.kind in FFN_KINDS, f"kind={self.kind!r}: must be one of {FFN_KINDS}")
        _positive("hidden_dim", self.hidden_dim)
        _positive("num_experts", self.num_experts)
        if self.kind == "dense":
            _require(self.num_experts == 1,
                     f"num_experts={self.num_experts}: a dense FFN has 1 expert; set kind='moe'")
        else:
            _require(self.num_experts >= 2,
                     f"num_experts={self.num_experts}: an MoE FFN needs ≥ 2 experts")
        _require(1 <= self.top_k <= self.num_experts,
                 f"top_k={self.top_k}: must be between 1 and num_experts={self.num_experts}")
        _require(self.aux_loss_weight >= 0, f"aux_loss_weight={self.aux_loss_weight}: must be ≥ 0")


@dataclass
class GateConfig:
    """Residual gate of the memory update: ``STM_t = (1 − G) ⊙ STM_{t−1} + G ⊙ Update``.

    ``static``: a learned logit per slot. ``elementwise``: ``w ⊙ (old + update) + b`` per
    feature. ``linear``: a learned ``D → D`` map of ``old + update``. ``slot_mean``: a learned
    weight per slot times that slot's mean feature of ``old + update`` (one logit per slot; the
    ``elementwise`` gate of the reference implementation ``rxlm``). ``none``: plain residual
    ``STM_{t−1} + Update`` (ablation). With ``activation='tanh'`` (ablation) the update is
    ``(1 − G) ⊙ STM_{t−1} + (1 + G) ⊙ Update`` with ``G = tanh(...)``.
    """

    kind: Literal["static", "elementwise", "linear", "none"] = "linear"
    """How the gate is computed."""
    activation: Literal["sigmoid", "tanh"] = "sigmoid"
    """Squashing of the gate logit."""
    init_bias: float = 0.0
    """Initial gate logit (0 → G = 0.5 with sigmoid; negative values start the memory keeping
    more of what it holds); for ``slot_mean``, the initial per-slot weight."""
    per_slot_bias: bool = False
    """Add a learned logit per slot (S, 1) to the gate: each slot can learn its own openness
    (how quickly it is overwritten). Not with ``kind='none'``."""
    slot_bias_spread: float = 0.0
    """With ``per_slot_bias``: the per-slot logits start evenly spread over
    [−spread, +spread] (slot 0 keeps most, the last slot writes most), a range of time scales
    from the first step instead of one; 0 starts them all at 0."""

    def __post_init__(self) -> None:
        _require(self.kind in GATE_KINDS, f"kind={self.kind!r}: must be one of {GATE_KINDS}")
        _require(self.slot_bias_spread >= 0, f"slot_bias_spread={self.slot_bias_spread}: must be ≥ 0")
        _require(self.slot_bias_spread == 0 or self.per_slot_bias,
                 f"slot_bias_spread={self.slot_bias_spread}: needs per_slot_bias=true")
        _require(not (self.per_slot_bias and self.kind == "none"),
                 "per_slot_bias=True: the plain residual (kind='none') has no gate to bias; "
                 "choose a gate kind or set per_slot_bias=false")
        _require(self.activation in GATE_ACTIVATIONS,
                 f"activation={self.activation!r}: must be one of {GATE_ACTIVATIONS}")


@dataclass
class MemoryAttentionConfig:
    """Memory Attention: merges the encoded interaction (ED) into the STM, layer by layer.

    Every variant first builds a query state from STM layer i, then lets it attend to ED
    layer i (RoPE on the keys only); the gate mixes the result into STM layer i.
    ``simple``: the query state is STM layer i. ``self``: STM self-attention first.
    ``interlayer``: STM layer i attends to the mean of all STM layers first.
    ``gated_self_interlayer``: a learned gate mixes STM layer i with the all-layer mean,
    then self-attention.
    ``self_interlayer`` (the reference implementation ``rxlm``'s self-interlayer network): the
    normalised layer attends to a gated mix of itself and the normalised all-layer mean, a second
    gate adds that to the layer, and the result both queries ED and is what the final gate keeps
    (the other variants' final gate keeps STM layer i itself). All three gates follow ``gate``.
    """

    variant: Literal["simple", "self", "interlayer", "gated_self_interlayer", "self_interlayer"] = "simple"
    """Which pre-step (if any) precedes the attention to ED."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Heads of the memory-attention projections."""
    pre_attention: AttentionConfig | None = None
    """Heads of the pre-step attention (self/interlayer); ``None`` means ``attention``'s."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Residual gate between the old STM and the update."""
    slot_ids: bool = False
    """Add a learned identity vector per slot (S, D) to the state that *queries* the encoded
    interaction. Slots then differ in what they look for even when their contents are equal;
    the stored STM itself stays free of positions (only the queries carry the identity)."""
    write: Literal["attention", "competitive", "competitive_keep"] = "attention"
    """``attention``: each slot takes a softmax over the interaction's tokens (the paper's
    memory attention). ``competitive``: each token's weight is a softmax over the *slots*
    (Slot-Attention style), then every slot takes the weighted mean of what it won — slots
    compete for tokens, so equal slots cannot all take the same thing. ``competitive_keep``:
    the same, and each slot's gate is scaled by how much of the interaction it won, so a slot
    that wins nothing keeps what it holds exactly (old facts are not worn down by later turns)."""
    write_sink: bool = False
    """With a competitive write: one more learned query competes with the slots for every token
    and what it wins is dropped, so a token need not be written anywhere (small talk can leave
    the memory as it was; with ``competitive_keep`` slots that win nothing keep their content)."""
    ed_positions: bool = False
    """Add a fixed sinusoidal code of each token's position in the interaction to the normalised
    encoded states before the keys *and values* are projected, so what a slot takes from a token
    carries where the token stood (the order of a value's pieces). The STM has no positions of its
    own: the code comes only with the content written into it."""

    ed_previous: bool = False
    """Add a learned projection (zero at the start) of each token's *previous* encoded state to
    its own before the keys and values are projected, so what a slot takes from a token says
    which token came before it — the order of a value's pieces (``2 3 8`` vs ``8 3 2``) as
    content, not as a position. The STM stays free of positions."""

    def __post_init__(self) -> None:
        _require(self.variant in MEMORY_ATTENTION_VARIANTS,
                 f"variant={self.variant!r}: must be one of {MEMORY_ATTENTION_VARIANTS}")
        _require(self.write in MEMORY_WRITES, f"write={self.write!r}: must be one of {MEMORY_WRITES}")
        _require(not self.write_sink or self.write != "attention",
                 "write_sink=true needs a competitive write (write: competitive or competitive_keep)")


@dataclass
class STMConfig:
    """Short-Term Memory: ``num_layers`` (= decoder layers) × ``num_slots`` × ``dim``."""

    num_slots: int = 32
    """Memory slots per layer (S). Slots are a set: no positional encoding."""
    init: Literal["normal", "zeros", "learned"] = "normal"
    """Fresh-conversation STM: small random normal, zeros, or a learned parameter."""
    init_std: float = 0.02
    """Standard deviation of the ``normal`` initialisation (and of the ``learned`` parameter's
    initialisation)."""
    init_noise_std: float = 0.0
    """With ``learned``: Gaussian noise of this standard deviation added per conversation (seeded
    like the ``normal`` init), so no two conversations start from exactly the same memory."""

    def __post_init__(self) -> None:
        _require(self.num_slots >= 1, f"num_slots={self.num_slots}: the STM needs ≥ 1 slot per layer")
        _require(self.init in STM_INITS, f"init={self.init!r}: must be one of {STM_INITS}")
        _require(self.init_std >= 0, f"init_std={self.init_std}: must be ≥ 0")
        _require(self.init_noise_std >= 0, f"init_noise_std={self.init_noise_std}: must be ≥ 0")
        _require(self.init_noise_std == 0 or self.init == "learned",
                 f"init_noise_std={self.init_noise_std}: only the 'learned' init takes noise on top "
                 f"(init={self.init!r}); use init_std for 'normal'")


def _check_dims(dim: int, num_layers: int, vocab_size: int, attentions: dict[str, AttentionConfig]) -> None:
    _positive("dim", dim)
    _positive("num_layers", num_layers)
    _require(vocab_size > NUM_SPECIAL,
             f"vocab_size={vocab_size}: must exceed the {NUM_SPECIAL} special tokens")
    for name, att in attentions.items():
        _require(dim % att.num_heads == 0,
                 f"{name}.num_heads={att.num_heads}: must divide dim={dim} "
                 f"(head size would be {dim / att.num_heads:g})")
        head = dim // att.num_heads
        _require(head % 2 == 0,
                 f"{name}.num_heads={att.num_heads}: head size dim/num_heads = {dim}/{att.num_heads} "
                 f"= {head} must be even for rotary embeddings")


class _DictMixin:
    """``to_dict``/``from_dict``/JSON helpers shared by the top-level configs."""

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}  # type: ignore[attr-defined]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        data.pop("model_type", None)
        return _build(cls, data, path=cls.__name__)


def _build(cls, data: dict[str, Any], path: str):
    """Rebuild a (nested) config dataclass, naming any unknown field with its path."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known fields are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        nested = sub is not None and value is not None
        kwargs[name] = _build(sub, value, f"{path}.{name}") if nested else value
    return cls(**kwargs)


@dataclass
class RxTConfig(_DictMixin):
    """A Reactive Transformer: Generator-Decoder, Memory Encoder, Memory Attention, STM.

    The encoder, the decoder, the memory attention and the STM all have ``num_layers``
    layers: decoder layer i reads STM layer i, memory-attention layer i writes it from
    encoder layer i.
    """

    model_type = "rxt"

    vocab_size: int = 4096
    """Tokens in the shared embedding (special tokens included)."""
    dim: int = 128
    """Model width D."""
    num_layers: int = 2
    """Layers L of the decoder, encoder, memory attention and STM."""
    decoder_attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Decoder causal self-attention."""
    memory_cross_attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Decoder memory cross-attention over the STM (RoPE on queries only)."""
    decoder_ffn: FFNConfig = field(default_factory=FFNConfig)
    """Decoder feed-forward (dense or MoE)."""
    encoder_attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Encoder bidirectional self-attention."""
    encoder_ffn: FFNConfig = field(default_factory=FFNConfig)
    """Encoder feed-forward (dense)."""
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)
    """How the STM is updated from the encoded interaction."""
    stm: STMConfig = field(default_factory=STMConfig)
    """Short-Term Memory size and initialisation."""
    tie_embeddings: bool = True
    """Share the embedding matrix with the output heads."""
    lm_head_bias: bool = False
    """A bias on the decoder's output head (checkpoints of ``rxlm`` have one); needs untied
    embeddings."""
    decoder_final_norm: bool = True
    """RMSNorm the decoder's last hidden states before the head (``rxlm``'s default has none)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation."""

    def __post_init__(self) -> None:
        attentions = {
            "decoder_attention": self.decoder_attention,
            "memory_cross_attention": self.memory_cross_attention,
            "encoder_attention": self.encoder_attention,
            "memory_attention.attention": self.memory_attention.attention,
        }
        if self.memory_attention.pre_attention is not None:
            attentions["memory_attention.pre_attention"] = self.memory_attention.pre_attention
        _check_dims(self.dim, self.num_layers, self.vocab_size, attentions)
        _require(not (self.lm_head_bias and self.tie_embeddings),
                 "lm_head_bias=True: a biased head needs its own weight; set tie_embeddings=false")
        _require(self.encoder_ffn.kind == "dense",
                 f"encoder_ffn.kind={self.encoder_ffn.kind!r}: the memory encoder uses a dense FFN")
        _require(self.norm_eps > 0, f"norm_eps={self.norm_eps}: must be > 0")

    @property
    def stm_shape(self) -> tuple[int, int, int]:
        """Shape of one conversation's STM: (L, S, D)."""
        return (self.num_layers, self.stm.num_slots, self.dim)


@dataclass
class StatelessConfig(_DictMixin):
    """The stateless baseline: a decoder-only LM from the same blocks, no memory."""

    model_type = "stateless"

    vocab_size: int = 4096
    """Tokens in the embedding (special tokens included)."""
    dim: int = 128
    """Model width D."""
    num_layers: int = 2
    """Decoder layers."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Causal self-attention."""
    ffn: FFNConfig = field(default_factory=FFNConfig)
    """Feed-forward (dense or MoE)."""
    tie_embeddings: bool = True
    """Share the embedding matrix with the output head."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation."""

    def __post_init__(self) -> None:
        _check_dims(self.dim, self.num_layers, self.vocab_size, {"attention": self.attention})
        _require(self.norm_eps > 0, f"norm_eps={self.norm_eps}: must be > 0")


_NESTED: dict[tuple[str, str], type] = {
    ("RxTConfig", "decoder_attention"): AttentionConfig,
    ("RxTConfig", "memory_cross_attention"): AttentionConfig,
    ("RxTConfig", "decoder_ffn"): FFNConfig,
    ("RxTConfig", "encoder_attention"): AttentionConfig,
    ("RxTConfig", "encoder_ffn"): FFNConfig,
    ("RxTConfig", "memory_attention"): MemoryAttentionConfig,
    ("RxTConfig", "stm"): STMConfig,
    ("MemoryAttentionConfig", "attention"): AttentionConfig,
    ("MemoryAttentionConfig", "pre_attention"): AttentionConfig,
    ("MemoryAttentionConfig", "gate"): GateConfig,
    ("StatelessConfig", "attention"): AttentionConfig,
    ("StatelessConfig", "ffn"): FFNConfig,
}

ModelConfig = RxTConfig | StatelessConfig


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Build the config named by ``data["model_type"]`` (``rxt`` or ``stateless``)."""
    kind = data.get("model_type")
    if kind == "rxt":
        return RxTConfig.from_dict(data)
    if kind == "stateless":
        return StatelessConfig.from_dict(data)
    raise ValueError(f"model_type={kind!r}: must be 'rxt' or 'stateless'")
