"""Reward properties of every shipped NTL reward combination, over a grid of truths and answers.

The whole reward path runs: response tokens -> digit targets -> NTLInfo (from the digit logits of a policy that is
confident in the digits it wrote: logit 8 on each) -> the reward function. For every truth, data source and
combination:

1. a correct answer scores strictly above every wrong one;
2. among wrong answers, the NTL bonus does not increase as |answer - truth| grows;
3. a response without an answer never scores above a formatted near miss.
"""
from __future__ import annotations

from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.models.tokenizers import build_char_tokenizer
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets, compute_ntl_info
from ntl_jax.ntl.targets import build_batch_targets
from ntl_jax.rewards.ntl_rewards import COMBINATIONS, custom_ntl_reward

TRUTHS = ["0", "7", "18", "100", "999", "1000", "1234", "-18", "2.5", "40.25"]
OFFSETS = [Fraction(x) for x in ("1", "2", "3", "9", "10", "11", "99", "100", "101", "999", "1000", "0.5", "0.25")]
SOURCES = {"arithmetic": ("#### {}", ["I do not know.", "####"]),
           "openai/gsm8k": ("#### {}", ["The answer is {}.", "I do not know.", "#### so"])}


def _fmt(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def answers_for(truth: Fraction) -> list[Fraction]:
    """Near and far misses on both sides, sign flips, zero and shifted digit counts."""
    grid = {truth} | {truth + d for d in OFFSETS} | {truth - d for d in OFFSETS}
    grid |= {Fraction(0), -truth, truth * 10, truth / 10 if truth.denominator == 1 and truth % 10 == 0 else truth}
    return sorted(v for v in grid if abs(v) < 10**6)


@pytest.fixture(scope="module")
def scored():
    """{(source, truth, combination): [(answer or None, |answer - truth| or None, score, bonus)]}."""
    tokenizer = build_char_tokenizer()
    digit_ids = digit_token_ids(tokenizer)
    written_digit = {int(token): digit for digit, token in enumerate(digit_ids)}
    out = {}
    for source, (template, no_answers) in SOURCES.items():
        for truth_text in TRUTHS:
            truth = Fraction(truth_text)
            answers = answers_for(truth)
            texts = [template.format(_fmt(a)) for a in answers] + [t.format(truth_text) for t in no_answers]
            encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
            length = max(map(len, encoded))
            ids = np.zeros((len(texts), length), np.int32)
            mask = np.zeros((len(texts), length), np.int32)
            for row, e in enumerate(encoded):
                ids[row, : len(e)], mask[row, : len(e)] = e, 1
            extraction = "strict" if source == "openai/gsm8k" else "strict_then_last"
            batch = build_batch_targets(ids, mask, [truth_text] * len(texts), tokenizer, digit_ids, "final_answer",
                                        answer_extraction=extraction)
            written = np.vectorize(lambda i: written_digit.get(int(i), -1))(ids)
            logits = np.where(written[..., None] == np.arange(10), 8.0, 0.0).astype(np.float32)
            info = compute_ntl_info(jnp.asarray(logits), DigitTargets.from_batch(batch), "wasserstein").to_host()
            for combination in COMBINATIONS:
                results = []
                for row, text in enumerate(texts):
                    reward = custom_ntl_reward(source, text, truth_text, ntl_info=info.sample_view(row), tau=0.1,
                                               combination=combination)
                    answer = answers[row] if row < len(answers) else None
                    distance = None if answer is None else abs(answer - truth)
                    results.append((answer, distance, reward["score"], reward["ntl_bonus"]))
                out[(source, truth_text, combination)] = results
    return out


def test_the_grid_is_what_it_claims(scored):
    assert len(scored) == len(SOURCES) * len(TRUTHS) * len(COMBINATIONS)
    some = scored[("arithmetic", "1000", "add")]
    assert any(a == 999 for a, *_ in some) and any(a == 0 for a, *_ in some) and any(a is None for a, *_ in some)


def test_a_correct_answer_scores_strictly_above_every_wrong_one(scored):
    for key, results in scored.items():
        correct = [score for _, d, score, _ in results if d == 0]
        others = [score for _, d, score, _ in results if d != 0]
        assert len(correct) == 1, key
        assert correct[0] > max(others), key


def test_the_bonus_does_not_grow_with_the_distance_of_a_wrong_answer(scored):
    for key, results in scored.items():
        wrong = sorted((d, bonus, a) for a, d, _, bonus in results if d not in (None, 0))
        for (d_near, bonus_near, a_near), (d_far, bonus_far, a_far) in zip(wrong, wrong[1:]):
            if d_far > d_near:
                assert bonus_far <= bonus_near + 1e-9, (key, a_near, bonus_near, a_far, bonus_far)


def test_no_answer_never_scores_above_a_formatted_near_miss(scored):
    for key, results in scored.items():
        nearest = min(d for _, d, _, _ in results if d not in (None, 0))
        near_miss = max(score for _, d, score, _ in results if d == nearest)
        for answer, d, score, _ in results:
            if answer is None:
                assert score <= near_miss, key


def test_the_add_form_pays_near_misses_and_multiply_does_not(scored):
    added = {a: s for a, _, s, _ in scored[("arithmetic", "1000", "add")]}
    multiplied = {a: s for a, _, s, _ in scored[("arithmetic", "1000", "multiply")]}
    assert added[999] > added[0] > 0.0  # the seed's per-digit bonus paid #### 0 more than #### 999
    assert multiplied[999] == multiplied[0] == 0.0


def _confident_info(text: str, truth: str):
    tokenizer = build_char_tokenizer()
    digit_ids = digit_token_ids(tokenizer)
    written_digit = {int(token): digit for digit, token in enumerate(digit_ids)}
    ids = np.asarray([tokenizer.encode(text, add_special_tokens=False)], np.int32)
    batch = build_batch_targets(ids, np.ones_like(ids), [truth], tokenizer, digit_ids, "final_answer")
    written = np.vectorize(lambda i: written_digit.get(int(i), -1))(ids)
    logits = np.where(written[..., None] == np.arange(10), 8.0, 0.0).astype(np.float32)
    return compute_ntl_info(jnp.asarray(logits), DigitTargets.from_batch(batch), "wasserstein").to_host().sample_view(0)


@pytest.mark.parametrize("answer, truth, error", [("2.5", "2.5", 0.0), ("2.5", "3", 0.5 / 3), ("40.25", "40", 0.25 / 40),
                                                  ("0.75", "1", 0.25)])
def test_decimal_places_count_as_tenths_and_hundredths(answer, truth, error):
    view = _confident_info(f"#### {answer}", truth)
    assert view["answer_error"] == pytest.approx(error, abs=0.02)  # logit 8 leaves ~1% of mass on other digits


@pytest.mark.parametrize("answer", ["9" * 45, "1" + "0" * 60, "-" + "7" * 50])
def test_an_answer_too_long_for_float32_gets_a_finite_error_and_no_bonus(answer):
    """A sampled answer of 40+ digits once made number_error inf (10^39 overflows float32) and the reward raise."""
    tokenizer = build_char_tokenizer()
    digit_ids = digit_token_ids(tokenizer)
    written_digit = {int(token): digit for digit, token in enumerate(digit_ids)}
    text = f"#### {answer}"
    ids = np.asarray([tokenizer.encode(text, add_special_tokens=False)], np.int32)
    batch = build_batch_targets(ids, np.ones_like(ids), ["18"], tokenizer, digit_ids, "final_answer")
    written = np.vectorize(lambda i: written_digit.get(int(i), -1))(ids)
    logits = np.where(written[..., None] == np.arange(10), 8.0, 0.0).astype(np.float32)
    info = compute_ntl_info(jnp.asarray(logits), DigitTargets.from_batch(batch), "wasserstein").to_host()
    view = info.sample_view(0)
    assert np.isfinite(view["number_error"]) and view["number_error"] > 1e15
    assert np.isfinite(view["answer_error"]) and np.isfinite(view["ntl_loss"])
    for combination in COMBINATIONS:
        reward = custom_ntl_reward("arithmetic", text, "18", ntl_info=view, tau=0.1, combination=combination)
        assert reward["ntl_bonus"] == 0.0 and reward["score"] == 0.0
