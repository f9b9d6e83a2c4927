"""Exact character offsets of tokens in their decoded text, for any HF tokenizer (byte-level BPE included).

A digit target belongs to the token that shows the digit; counting characters per token would drift on tokenizers
whose lone-token decode differs from its in-context decode (a stripped leading space, a byte of a multi-byte
character). :func:`token_char_offsets` tries the cheap way first and checks it, then falls back to exact ones.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

_OFFSET_WINDOW = 8



def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _batch_decode(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    return tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _windowed_lengths(ids: list[int], tokenizer: Any) -> np.ndarray:
    """len_i = len(decode(ids[s:i+1])) - len(decode(ids[s:i])), s = i - window: linear-time, exact for decoders whose
    effect is local (byte-level merges, a stripped leading space); verified by the caller."""
    starts = [max(0, i - _OFFSET_WINDOW) for i in range(len(ids))]
    with_token = _batch_decode(tokenizer, [ids[s : i + 1] for i, s in enumerate(starts)])
    without_token = _batch_decode(tokenizer, [ids[s:i] for i, s in enumerate(starts)])
    return np.asarray([len(a) - len(b) for a, b in zip(with_token, without_token)], dtype=np.int64)


def _prefix_lengths(ids: list[int], tokenizer: Any, text: str) -> np.ndarray:
    """len_i = len(decode(ids[:i+1])) - len(decode(ids[:i])) (clamped monotone): exact, quadratic."""
    ends = np.asarray([len(_decode(tokenizer, ids[: i + 1])) for i in range(len(ids))], dtype=np.int64)
    ends = np.minimum(np.maximum.accumulate(ends), len(text))
    return np.diff(ends, prepend=0)


def _lengths_consistent(text: str, lengths: np.ndarray, pieces: list[str]) -> bool:
    """Lengths tile `text`, and every token whose lone decode is whole characters of its in-context length reads the
    same in `text` (a lone byte of a multi-byte character decodes to U+FFFD and is not comparable)."""
    if lengths.min(initial=0) < 0 or int(lengths.sum()) != len(text):
        return False
    ends = np.cumsum(lengths)
    return all(
        text[end - length : end] == piece
        for piece, length, end in zip(pieces, lengths.tolist(), ends.tolist())
        if len(piece) == length and "\ufffd" not in piece
    )


def token_lengths(ids: np.ndarray, tokenizer: Any, reference_text: str | None) -> tuple[str, np.ndarray]:
    """(text, int64 [T] characters each token contributes to text); special tokens contribute 0."""
    special = np.asarray(sorted(int(t) for t in getattr(tokenizer, "all_special_ids", ())), dtype=np.int64)
    kept = ~np.isin(ids, special)
    unique, inverse = np.unique(ids[kept], return_inverse=True)
    unique_pieces = np.asarray(_batch_decode(tokenizer, [[t] for t in unique.tolist()]), dtype=object)
    pieces = unique_pieces[inverse].tolist()
    concat = "".join(pieces)
    kept_ids = ids[kept].tolist()
    text = concat if reference_text is not None and concat == reference_text else _decode(tokenizer, kept_ids)
    lengths = np.asarray([len(p) for p in unique_pieces.tolist()], dtype=np.int64)[inverse]
    if concat != text:
        lengths = _windowed_lengths(kept_ids, tokenizer)
        if not _lengths_consistent(text, lengths, pieces):
            lengths = _prefix_lengths(kept_ids, tokenizer, text)
    all_lengths = np.zeros(len(ids), dtype=np.int64)
    all_lengths[kept] = lengths
    return text, all_lengths


def token_char_offsets(
    token_ids: Sequence[int], tokenizer: Any, *, reference_text: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): text = decode of the non-special tokens; spans[i] = (start, end) of token i in text.

    Special tokens (eos, pad, ...) get empty spans. Tries, in order: lone-token decodes concatenated (checked against
    `reference_text` or the full decode), windowed in-context decodes, and exact prefix decodes.
    """
    text, lengths = token_lengths(np.asarray(token_ids, dtype=np.int64).reshape(-1), tokenizer, reference_text)
    ends = np.cumsum(lengths)
    return text, list(zip((ends - lengths).tolist(), ends.tolist()))
