"""Text ↔ token ids for serving: safe encoding of user text and streaming detokenisation.

The tokenizer is the byte-level BPE stored in the model directory (special tokens at ids
0..6, see :mod:`rxt_dist.tokens`). Two serving-specific rules live here:

* user text never produces a special token: ``"[EOS]"`` typed by a user is encoded as the
  characters ``[``, ``E``, … — otherwise a message could end a turn or forge a ``[Q]``;
* answers are decoded incrementally without splitting a UTF-8 character across two
  streamed chunks, and the concatenated chunks equal the answer decoded at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from rxt_dist.data.tokenizer import TextCodec as DataTextCodec

_REPLACEMENT = "\ufffd"


class TextCodec(DataTextCodec):
    """The dataset codec (:class:`rxt_dist.data.TextCodec`: user text never yields a special
    token) plus what serving adds: whole answers and streaming detokenisation."""

    @classmethod
    def from_json(cls, text: str) -> "TextCodec":
        return cls(Tokenizer.from_str(text))

    def decode_answer(self, ids: Sequence[int]) -> str:
        """A whole answer as text: special tokens skipped, the byte-level prefix space removed."""
        return self.decode(ids)

    def detokenizer(self) -> "Detokenizer":
        return Detokenizer(self.tokenizer)


def _strip_prefix_space(text: str) -> str:
    # The tokenizer pre-tokenizes with a prefix space, so an answer decodes as " word …".
    return text[1:] if text.startswith(" ") else text


class Detokenizer:
    """Turns a stream of answer token ids into text deltas.

    Decodes a short window of recent tokens and emits only the text that became final: a
    window ending in an incomplete UTF-8 sequence (decoded as U+FFFD) is held back until
    more tokens complete it, or until :meth:`flush`. ``"".join(deltas)`` equals
    :meth:`TextCodec.decode_answer` of all the ids.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window; the text before it is final
        self.read_offset = 0  # tokens up to here have been emitted
        self.started = False  # whether the first non-empty delta went out

    def push(self, token: int) -> str:
        """Add one token; return the text that became final (possibly empty)."""
        self.ids.append(token)
        return self._emit(final=False)

    def flush(self) -> str:
        """The text still held back (an answer that ended inside a broken UTF-8 sequence)."""
        return self._emit(final=True)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _emit(self, final: bool) -> str:
        done = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) <= len(done) or (text.endswith(_REPLACEMENT) and not final):
            return ""
        delta = text[len(done):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if not self.started:
            delta, self.started = _strip_prefix_space(delta), True
        return delta
