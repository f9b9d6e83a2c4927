"""Digit-token ids: which vocabulary entries are the single-character ASCII tokens "0".."9".

The Number Token Loss reads `digit_logits = logits[..., digit_ids]`, so `digit_ids[k]` must be the token that
means exactly the digit k. Tokenizers that group digits (Llama-3 style "123") or lack a digit are refused.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import chex
import numpy as np

DIGITS: str = "0123456789"
DIGIT_PROBE: str = "0123456789 12.5"

_CacheKey = tuple[int, str, int]
# key -> (weak reference to the tokenizer, digit ids); the weakref guards against a recycled id().
_DIGIT_CACHE: dict[_CacheKey, tuple[Any, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


class DigitTokenError(ValueError):
    """The tokenizer cannot give single-digit tokens "0".."9"."""


def describe_tokenizer(tokenizer: Any) -> str:
    """`ClassName('name_or_path')`, used in error messages."""
    return f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '')!r})"


def clear_digit_cache() -> None:
    """Forgets every cached digit mapping."""
    with _CACHE_LOCK:
        _DIGIT_CACHE.clear()


def digit_cache_size() -> int:
    """Number of tokenizers whose digit mapping is cached."""
    with _CACHE_LOCK:
        return len(_DIGIT_CACHE)


def _cache_key(tokenizer: Any, vocab_size: int) -> _CacheKey:
    return (id(tokenizer), str(getattr(tokenizer, "name_or_path", "")), vocab_size)


def _lookup_digit_ids(tokenizer: Any) -> np.ndarray:
    """Vocabulary ids of the tokens "0".."9" (not space-prefixed variants)."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for digit in DIGITS:
        token_id = tokenizer.convert_tokens_to_ids(digit)
        if token_id is None or (unk_id is not None and token_id == unk_id):
            raise DigitTokenError(f"tokenizer {describe_tokenizer(tokenizer)} has no single-character token {digit!r}")
        ids.append(int(token_id))
    return np.asarray(ids, dtype=np.int32)


def _probe_pieces(tokenizer: Any, probe: str) -> list[tuple[int, str]]:
    """(token id, that token decoded alone) for each token of `probe`."""
    ids = [int(t) for t in tokenizer.encode(probe, add_special_tokens=False)]
    return [(token_id, tokenizer.decode([token_id])) for token_id in ids]


def _check_digits_split(tokenizer: Any, digit_ids: np.ndarray, probe: str = DIGIT_PROBE) -> None:
    """Raises DigitTokenError unless every digit of `probe` is encoded as its own digit token."""
    digit_of_id = {int(t): DIGITS[k] for k, t in enumerate(digit_ids)}
    for digit, token_id in zip(DIGITS, digit_ids):
        decoded = tokenizer.decode([int(token_id)])
        if decoded != digit:
            raise DigitTokenError(
                f"tokenizer {describe_tokenizer(tokenizer)}: token {digit!r} (id {int(token_id)}) decodes to {decoded!r}"
            )
    digits_seen = []
    for token_id, piece in _probe_pieces(tokenizer, probe):
        if token_id in digit_of_id:
            digits_seen.append(digit_of_id[token_id])
        elif any(c in DIGITS for c in piece):
            token = tokenizer.convert_ids_to_tokens(token_id)
            raise DigitTokenError(
                f"tokenizer {describe_tokenizer(tokenizer)} does not split numbers into single digits: "
                f"probe {probe!r} gives token {token!r} (id {token_id}, text {piece!r})"
            )
    expected = [c for c in probe if c in DIGITS]
    if digits_seen != expected:
        raise DigitTokenError(
            f"tokenizer {describe_tokenizer(tokenizer)} encodes the digits of {probe!r} as {''.join(digits_seen)!r}"
        )


def digit_token_ids(tokenizer: Any, logits_dim: int | None = None, *, cache: bool = True) -> np.ndarray:
    """int32 [10]: `ids[k]` is the token id of the digit k; checked with the probe "0123456789 12.5".

    `logits_dim` (the model's last logit dimension) may exceed len(tokenizer) (padded embeddings) but not be smaller.
    """
    vocab_size = len(tokenizer)
    if logits_dim is not None and int(logits_dim) < vocab_size:
        raise ValueError(
            f"logits_dim={logits_dim} is smaller than the vocabulary of {describe_tokenizer(tokenizer)} "
            f"({vocab_size} tokens); allowed: logits_dim >= {vocab_size}"
        )
    key = _cache_key(tokenizer, vocab_size)
    if cache:
        with _CACHE_LOCK:
            entry = _DIGIT_CACHE.get(key)
        if entry is not None and entry[0]() is tokenizer:
            return entry[1].copy()
    ids = _lookup_digit_ids(tokenizer)
    _check_digits_split(tokenizer, ids)
    if cache:
        try:
            ref = weakref.ref(tokenizer)
        except TypeError:  # objects without weakref support are still cached by key alone
            ref = lambda tokenizer=tokenizer: tokenizer  # noqa: E731
        with _CACHE_LOCK:
            _DIGIT_CACHE[key] = (ref, ids.copy())
    return ids


def is_digit_token_mask(token_ids: np.ndarray, digit_ids: np.ndarray) -> np.ndarray:
    """bool, same shape as token_ids: token_ids[i] is one of digit_ids."""
    digit_ids = np.asarray(digit_ids)
    chex.assert_shape(digit_ids, (10,))
    return np.isin(np.asarray(token_ids), digit_ids)


def digit_value_of_tokens(token_ids: np.ndarray, digit_ids: np.ndarray) -> np.ndarray:
    """int32, same shape as token_ids: k where token_ids[i] == digit_ids[k], else -1."""
    digit_ids = np.asarray(digit_ids)
    chex.assert_shape(digit_ids, (10,))
    token_ids = np.asarray(token_ids)
    values = np.full(token_ids.shape, -1, dtype=np.int32)
    for k, token_id in enumerate(digit_ids):
        values[token_ids == token_id] = k
    return values
