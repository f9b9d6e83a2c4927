"""Digit-token ids: real HF tokenizers that split digits are accepted, ones that merge or lack digits are refused."""
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ntl_jax.models.tokenizers import build_char_tokenizer, train_byte_level_bpe
from ntl_jax.ntl.digits import (
    DigitTokenError,
    clear_digit_cache,
    digit_cache_size,
    digit_token_ids,
    digit_value_of_tokens,
    is_digit_token_mask,
)

CORPUS = ["Natalia sold 48/2 = <<48/2=24>>24 clips", "The answer is 1,234.50 dollars", "#### 72", "0123456789"] * 5


def merged_digit_bpe() -> PreTrainedTokenizerFast:
    """Byte-level BPE whose vocabulary merges '1'+'2' into '12' (Llama-3 style digit groups)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(["<pad>", *sorted(alphabet), "12"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "2")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", name_or_path="merged-bpe")


def char_tokenizer_without(missing: str) -> PreTrainedTokenizerFast:
    chars = [c for c in "0123456789 .+" if c != missing]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(["<unk>", *chars])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_digit_cache()
    yield
    clear_digit_cache()


def test_char_tokenizer_digit_ids():
    tokenizer = build_char_tokenizer()
    ids = digit_token_ids(tokenizer)
    assert ids.shape == (10,) and ids.dtype == np.int32
    assert ids.tolist() == tokenizer.convert_tokens_to_ids(list("0123456789"))
    assert [tokenizer.decode([int(i)]) for i in ids] == list("0123456789")


def test_byte_level_bpe_with_split_digits_is_accepted():
    tokenizer = train_byte_level_bpe(CORPUS, vocab_size=300)
    ids = digit_token_ids(tokenizer)
    assert ids.tolist() == [tokenizer.get_vocab()[d] for d in "0123456789"]
    encoded = tokenizer.encode("x 907", add_special_tokens=False)
    assert digit_value_of_tokens(np.asarray(encoded), ids)[-3:].tolist() == [9, 0, 7]


def test_tokenizer_that_merges_digits_is_refused_naming_tokenizer_and_token():
    tokenizer = merged_digit_bpe()
    assert "12" in tokenizer.convert_ids_to_tokens(tokenizer.encode("12", add_special_tokens=False))
    with pytest.raises(DigitTokenError) as error:
        digit_token_ids(tokenizer)
    message = str(error.value)
    assert "PreTrainedTokenizerFast" in message or "TokenizersBackend" in message
    assert "merged-bpe" in message and "'12'" in message


def test_tokenizer_lacking_a_digit_is_refused():
    with pytest.raises(DigitTokenError, match="'7'"):
        digit_token_ids(char_tokenizer_without("7"))


def test_logits_dim_smaller_than_vocab_is_refused_and_larger_accepted():
    tokenizer = build_char_tokenizer()
    with pytest.raises(ValueError, match=f"logits_dim={len(tokenizer) - 1}"):
        digit_token_ids(tokenizer, logits_dim=len(tokenizer) - 1)
    padded = digit_token_ids(tokenizer, logits_dim=len(tokenizer) + 64)
    np.testing.assert_array_equal(padded, digit_token_ids(tokenizer, logits_dim=len(tokenizer)))


def _count_lookups(tokenizer) -> list[str]:
    calls: list[str] = []
    original = tokenizer.convert_tokens_to_ids

    def counting(tokens):
        calls.append(tokens)
        return original(tokens)

    tokenizer.convert_tokens_to_ids = counting
    return calls


def test_mapping_is_cached_per_tokenizer_and_cache_can_be_cleared():
    tokenizer = build_char_tokenizer()
    calls = _count_lookups(tokenizer)
    first = digit_token_ids(tokenizer)
    lookups_after_first = len(calls)
    assert lookups_after_first >= 10 and digit_cache_size() == 1
    first[0] = -5  # the caller owns its copy
    second = digit_token_ids(tokenizer)
    assert len(calls) == lookups_after_first  # served from the cache
    assert second[0] == tokenizer.get_vocab()["0"]
    other = build_char_tokenizer("é")
    digit_token_ids(other)
    assert digit_cache_size() == 2
    clear_digit_cache()
    assert digit_cache_size() == 0
    digit_token_ids(tokenizer)
    assert len(calls) == 2 * lookups_after_first


def test_cache_false_recomputes():
    tokenizer = build_char_tokenizer()
    calls = _count_lookups(tokenizer)
    digit_token_ids(tokenizer, cache=False)
    digit_token_ids(tokenizer, cache=False)
    assert len(calls) >= 20 and digit_cache_size() == 0


def test_digit_masks_and_values():
    digit_ids = np.arange(10, 20, dtype=np.int32)
    tokens = np.array([[10, 3, 19], [15, 20, 9]])
    np.testing.assert_array_equal(is_digit_token_mask(tokens, digit_ids), [[True, False, True], [True, False, False]])
    np.testing.assert_array_equal(digit_value_of_tokens(tokens, digit_ids), [[0, -1, 9], [5, -1, -1]])
    with pytest.raises(AssertionError):
        is_digit_token_mask(tokens, digit_ids[:9])
