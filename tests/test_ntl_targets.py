"""Per-token NTL targets on hand-written responses, with the char tokenizer and a real byte-level BPE."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ntl_jax.models.tokenizers import build_char_tokenizer, train_byte_level_bpe
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.targets import (
    TrueNumber,
    align_digits,
    arithmetic_steps,
    build_batch_targets,
    build_targets,
    find_final_answer,
    ground_truth_digits,
    parse_true_number,
    token_char_offsets,
)
from ntl_jax.rewards import arithmetic, gsm8k

BPE_CORPUS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
    "The answer is $1,234.50 and 12 + 30 = 42 apples.",
    "She has -42 apples. #### 72",
    "café naïve 0123456789",
] * 10


@pytest.fixture(scope="module")
def char_tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    return train_byte_level_bpe(BPE_CORPUS, vocab_size=320)


def targeted(text, truth, tokenizer, mode="final_answer", **kwargs):
    """[(digit char, target, weight, is_final)] for the targeted tokens, plus the TargetResult."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    result = build_targets(ids, truth, tokenizer, digit_token_ids(tokenizer), mode, **kwargs)
    text_out, spans = token_char_offsets(ids, tokenizer)
    rows = [
        (text_out[s:e], int(t), float(w), bool(final))
        for (s, e), t, w, final in zip(spans, result.target_digits, result.weights, result.is_final_answer)
        if t >= 0
    ]
    return rows, result


def digits_and_targets(rows):
    return [(c, t) for c, t, *_ in rows]


# ------------------------------------------------------------------------------------------------ final answer


@pytest.mark.parametrize("tokenizer_name", ["char_tok", "bpe_tok"])
@pytest.mark.parametrize(
    "text, truth, expected, missing",
    [
        ("The answer is 1,234", "1234", [("1", 1), ("2", 2), ("3", 3), ("4", 4)], 0),
        ("It costs #### $1,234.50", "$1,234.5", [("1", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5), ("0", 0)], 0),
        ("x is 3.14", "3.2", [("3", 3), ("1", 2), ("4", 0)], 0),
        ("She has -42 apples", "-42", [("4", 4), ("2", 2)], 0),
        ("She has -42 apples", "42", [("4", 4), ("2", 2)], 0),
        ("#### 1234", "34", [("1", 0), ("2", 0), ("3", 3), ("4", 4)], 0),  # extra leading digits target 0
        ("#### 34", "1234", [("3", 3), ("4", 4)], 2),  # two truth digits have no position
        ("#### 7.5", "12.25", [("7", 2), ("5", 2)], 2),
        ("#### 0.5", "0.50", [("0", 0), ("5", 5)], 0),
    ],
)
def test_final_answer_alignment(request, tokenizer_name, text, truth, expected, missing):
    rows, result = targeted(text, truth, request.getfixturevalue(tokenizer_name))
    assert digits_and_targets(rows) == expected
    assert all(w == 1.0 and final for _, _, w, final in rows)
    assert result.missing_digits == missing
    assert result.target_digits.dtype == np.int32 and result.weights.dtype == np.float32


def test_answer_span_and_weights_are_zero_elsewhere(char_tok):
    text = "2 apples and 3 pears, #### $1,234.50"
    rows, result = targeted(text, "1234.5", char_tok)
    assert text[slice(*result.answer_span)] == "1,234.50"  # the arithmetic scorer reads no "$"
    assert np.all(result.weights[result.target_digits < 0] == 0)
    assert int(result.weights.sum()) == 6  # the other numbers are not targeted in final_answer mode


@pytest.mark.parametrize("mode", ["final_answer", "all_tokens", "hybrid"])
def test_response_without_number(char_tok, mode):
    rows, result = targeted("I do not know.", "1,000", char_tok, mode)
    assert rows == []
    assert np.all(result.target_digits == -1) and np.all(result.weights == 0)
    assert result.missing_digits == 0 and result.answer_span is None and not result.has_answer


def test_strict_answer_versus_last_number(char_tok):
    text = "#### 5 but maybe 7"
    assert digits_and_targets(targeted(text, "5", char_tok)[0]) == [("5", 5)]
    assert digits_and_targets(targeted(text, "5", char_tok, answer_extraction="strict")[0]) == [("5", 5)]
    assert digits_and_targets(targeted(text, "5", char_tok, answer_extraction="last")[0]) == [("7", 5)]
    rows, result = targeted("so 7", "5", char_tok, answer_extraction="strict")
    assert rows == [] and not result.has_answer
    assert digits_and_targets(targeted("so 7", "5", char_tok)[0]) == [("7", 5)]  # strict_then_last falls back


def test_answer_is_searched_in_the_tail_only(char_tok):
    early = "#### 9 " + "x" * 400 + " the end 4"
    rows, result = targeted(early, "9", char_tok)
    assert digits_and_targets(rows) == [("4", 9)]
    assert result.answer_span == (len(early) - 1, len(early))


# ------------------------------------------------------------------------------------------------ all tokens


@pytest.mark.parametrize("tokenizer_name", ["char_tok", "bpe_tok"])
def test_all_tokens_arithmetic_steps_target_true_values(request, tokenizer_name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    text = "So 12 + 30 = 41 and <<12*3=35>>35 more.\n#### 76"
    rows, result = targeted(text, "78", tokenizer, "all_tokens")
    assert [(c, t) for c, t, _, _ in rows] == [
        ("4", 4), ("1", 2),  # 12 + 30 is 42; the operands cannot be checked and have no target
        ("3", 3), ("5", 6),  # annotation result: 12*3 is 36
        ("3", 3), ("5", 6),  # the number rendered after '>>'
        ("7", 7), ("6", 8),  # final answer against the ground truth
    ]  # fmt: skip
    assert [final for *_, final in rows] == [False] * 6 + [True, True]
    assert all(w == 1.0 for _, _, w, _ in rows)
    assert result.number_index[result.target_digits >= 0].tolist() == [1, 1, 2, 2, 3, 3, 0, 0]


def test_chains_parentheses_and_non_terminating_results(char_tok):
    text = "2 + 3 - 1 = 5, (3 + 4) * 2 = 15, 10 / 4 = 2.5, 10 / 3 = 3.3, 5 / 0 = 1"
    rows, _ = targeted(text, "0", char_tok, "all_tokens")
    assert [(c, t) for c, t, _, _ in rows] == [
        ("5", 4),  # 2 + 3 - 1 is 4
        ("1", 1), ("5", 4),  # (3 + 4) * 2 is 14
        ("2", 2), ("5", 5),  # 10 / 4 is 2.5
        ("1", 0),  # 10 / 3 has no short decimal and 5 / 0 is refused: no targets; this 1 is the final answer
    ]  # fmt: skip


def test_hybrid_weights(char_tok):
    text = "3 + 4 = 8 so #### 8"
    rows, result = targeted(text, "7", char_tok, "hybrid", hybrid_weight=0.75)
    assert rows == [("8", 7, 0.25, False), ("8", 7, 0.75, True)]
    assert result.missing_digits == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reward_mode="everything"), "reward_mode"),
        (dict(answer_extraction="first"), "answer_extraction"),
        (dict(hybrid_weight=1.5), "hybrid_weight"),
    ],
)
def test_bad_options_raise(char_tok, kwargs, match):
    call = dict(reward_mode="final_answer", ground_truth="12") | kwargs
    mode, truth = call.pop("reward_mode"), call.pop("ground_truth")
    ids = char_tok.encode("#### 12", add_special_tokens=False)
    with pytest.raises(ValueError, match=match):
        build_targets(ids, truth, char_tok, digit_token_ids(char_tok), mode, **call)


# ------------------------------------------------------------------------------------------------ offsets


def exact_prefix_spans(ids, tokenizer):
    """Reference spans from decoding every prefix (special tokens removed first)."""
    special = set(tokenizer.all_special_ids)
    spans, kept, end = [], [], 0
    for token in ids:
        if token not in special:
            kept.append(token)
            end = len(tokenizer.decode(kept, clean_up_tokenization_spaces=False))
            spans.append((spans[-1][1] if spans else 0, end))
        else:
            spans.append((end, end))
    return spans


def metaspace_bpe() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE: a lone token decodes without its leading space, so lone pieces do not concatenate."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>", "</s>"], show_progress=False)
    backend.train_from_iterator(["the total 日本 is 12 + 30 = 42 apples"] * 10 + ["0123456789 .,#$"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def test_offsets_skip_special_tokens(char_tok):
    ids = [char_tok.bos_token_id, *char_tok.encode("7 + 5", add_special_tokens=False), char_tok.eos_token_id, 0, 0]
    text, spans = token_char_offsets(ids, char_tok)
    assert text == "7 + 5"
    assert spans == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 5), (5, 5), (5, 5)]


@pytest.mark.parametrize("tokenizer_name", ["bpe_tok", "metaspace"])
def test_offsets_are_exact_when_lone_decodes_do_not_concatenate(request, bpe_tok, tokenizer_name):
    tokenizer = bpe_tok if tokenizer_name == "bpe_tok" else metaspace_bpe()
    text = "the total 日本 is 12 + 30 = 42 apples #### 42"
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.pad_token_id]
    lone = "".join(tokenizer.decode([i]) for i in ids[:-1])
    assert lone != tokenizer.decode(ids[:-1])  # the fast path cannot be used
    decoded, spans = token_char_offsets(ids, tokenizer)
    assert decoded == tokenizer.decode(ids[:-1])
    assert spans == exact_prefix_spans(ids, tokenizer)
    digit_ids = digit_token_ids(tokenizer)
    for token, (start, end) in zip(ids, spans):
        if token in digit_ids:
            assert decoded[start:end] == str(digit_ids.tolist().index(token))
    rows, result = targeted(text, "42", tokenizer, "all_tokens")
    char_rows, char_result = targeted(text, "42", build_char_tokenizer("日本"), "all_tokens")
    assert rows == char_rows and result.missing_digits == char_result.missing_digits == 0


def test_reference_text_is_used_when_it_matches(char_tok):
    ids = char_tok.encode("1 + 1 = 3", add_special_tokens=False)
    text, spans = token_char_offsets(ids, char_tok, reference_text="1 + 1 = 3")
    assert text == "1 + 1 = 3" and spans[-1] == (8, 9)
    result = build_targets(ids, "2", char_tok, digit_token_ids(char_tok), "all_tokens", response_text="something else")
    assert result.target_digits[-1] == 2  # a wrong reference text is ignored, the decode is used


# ------------------------------------------------------------------------------------------------ batch


def test_batch_targets_respect_response_mask(char_tok):
    digit_ids = digit_token_ids(char_tok)
    rows = ["#### 12", "3 + 4 = 8 #### 8", "no idea"]
    encoded = [char_tok.encode(r, add_special_tokens=False) + [char_tok.eos_token_id] for r in rows]
    length = max(map(len, encoded)) + 3
    nine = char_tok.convert_tokens_to_ids("9")
    response_ids = np.full((3, length), nine, dtype=np.int32)  # digits beyond the mask must be ignored
    response_mask = np.zeros((3, length), dtype=np.int32)
    for row, ids in enumerate(encoded):
        response_ids[row, : len(ids)] = ids
        response_mask[row, : len(ids)] = 1
    batch = build_batch_targets(response_ids, response_mask, ["13", "7", "250"], char_tok, digit_ids, "all_tokens")
    assert batch.target_digits.shape == (3, length) and batch.target_digits.dtype == np.int32
    assert batch.weights.dtype == np.float32 and batch.missing_digits.dtype == np.int32
    assert np.all(batch.target_digits[response_mask == 0] == -1) and np.all(batch.weights[response_mask == 0] == 0)
    assert batch.target_digits[0, 5:7].tolist() == [1, 3]
    assert batch.target_digits[1, [0, 4, 8, 15]].tolist() == [-1, -1, 7, 7]  # operands: no target
    assert batch.has_answer.tolist() == [True, True, False]
    assert batch.missing_digits.tolist() == [0, 0, 0]
    single = build_targets(encoded[1], "7", char_tok, digit_ids, "all_tokens")
    np.testing.assert_array_equal(batch.target_digits[1, : len(encoded[1])], single.target_digits)
    with pytest.raises(ValueError, match="ground_truths"):
        build_batch_targets(response_ids, response_mask, ["1"], char_tok, digit_ids, "all_tokens")


# ------------------------------------------------------------------------------------------------ helpers, cost


def test_ground_truth_and_value_digits():
    assert ground_truth_digits("$1,234.50") == ("1234", "5")
    assert ground_truth_digits("-0.5") == ("0", "5")
    assert ground_truth_digits("She bought 3 apples.\n#### 1,000") == ("1000", "")
    assert parse_true_number("\u22120.5") == TrueNumber(negative=True, int_digits="0", frac_digits="5")
    assert parse_true_number("-0") == TrueNumber(negative=False, int_digits="0", frac_digits="")
    with pytest.raises(ValueError, match="ground_truth='twelve' is not a number"):
        parse_true_number("twelve")
    number = find_final_answer("#### 0.25")
    alignment = align_digits(number, TrueNumber(False, "3", "125"))
    assert alignment.positions.tolist() == [5, 7, 8] and alignment.targets.tolist() == [3, 1, 2]
    assert alignment.places.tolist() == [0, -1, -2] and alignment.missing.tolist() == [5]


def test_number_positions_refer_to_the_full_text():
    text = "filler " * 200 + "so #### -1,234.5 ok"
    number = find_final_answer(text)
    assert text[number.start : number.end] == "-1,234.5"
    assert "".join(text[p] for p in number.int_positions) == "1234"
    assert "".join(text[p] for p in number.frac_positions) == "5"
    cut = "7" * 1000  # a number crossing the 300-character limit is no answer, as for the arithmetic scorer
    assert find_final_answer("x " + cut) is None and arithmetic.extract_answer("x " + cut) is None
    # verl reads its last 300 characters only: a '####' before them is no answer for NTL either.
    assert find_final_answer("#### " + cut, "strict") is None and gsm8k.extract_solution("#### " + cut) is None
    assert len(find_final_answer("#### " + cut[:295], "strict").int_positions) == 295


def test_long_hostile_inputs_are_read_from_a_bounded_window(char_tok):
    """No duration is asserted (a loaded machine must not fail a test): the answer readers see at most the last
    300 characters whatever the input's length, and the targets of a 300-digit answer are right."""
    digit_ids = digit_token_ids(char_tok)
    texts = {
        "prose": "The farmer had 3 cows and 12 + 30 = 42 sheep. " * 21_000,
        "digits": "#### " + "9" * 100_000,
        "commas": "1," * 500_000 + "234",
        "equals": "1+1=2 " * 170_000,
    }
    for name, text in texts.items():
        for strategy in ("strict", "strict_then_last", "last"):
            number = find_final_answer(text, strategy)
            if number is not None:
                assert number.start >= len(text) - 300, (name, strategy)
        assert find_final_answer(text, "last") is not None or name == "digits", name
        assert len(arithmetic_steps(text)) <= 2 * 1024  # MAX_ARITHMETIC_STEPS results (+ rendered annotations)
    digits = char_tok.encode("#### " + "9" * 294 + "7", add_special_tokens=False)
    result = build_targets(digits, "7", char_tok, digit_ids, "final_answer", answer_extraction="strict")
    assert result.target_digits[-1] == 7 and np.all(result.target_digits[5:-1] == 0)
