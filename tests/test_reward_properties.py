"""The NTL reward's properties, over all pairs, through the project's own path.

Response tokens -> digit targets (``build_batch_targets``, each row read by its data source's reader) -> NTLInfo from
the digit logits of a policy that puts logit L on each digit it wrote -> ``custom_ntl_reward``. For both data
sources, truths with signs, decimals and up to 12 digits, every answer written in every format its scorer accepts
plus hostile texts, L in {5, 8, 12} and every reward setting below (the shipped default first):

(a) a correct answer scores strictly above every wrong one;
(b) among wrong answers at one confidence, a strictly closer one never scores lower;
(c) the bonus grades the scorer's number: two texts whose scorer reads the same number score the same;
(d) hedging never pays: the same text written with its digits' mass split scores no higher;
(e) all_tokens / hybrid: rewriting a wrong checkable step so it cannot be checked, or padding with right ones,
    never raises the reward;
(f) weights that could rank a wrong answer above a correct one are refused with one line.

"Closer" is the distance ``|a - truth|`` of the number the scorer reads (compared exactly, as Fractions); texts
without an answer, or whose answer spells no number, must score no higher than any wrong number.
"""
from __future__ import annotations

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.answers import number_value
from ntl_jax.models.tokenizers import build_char_tokenizer
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets, compute_ntl_info
from ntl_jax.ntl.targets import build_batch_targets
from ntl_jax.rewards import arithmetic, gsm8k
from ntl_jax.rewards.ntl_rewards import custom_ntl_reward

SOURCES = ("arithmetic", "openai/gsm8k")
TRUTHS = ["0", "7", "18", "100", "999", "1000", "1234", "-18", "2.5", "40.25", "-0.75", "98765.4321",
          "123456789012", "-100000000000"]
CONFIDENCES = (5.0, 8.0, 12.0)
#: (correct_weight, ntl_weight, confidence_weight, tau); the first is the shipped default.
SETTINGS = [(0.5, 0.5, 0.0, 0.1), (1.0, 0.2, 0.0, 0.1), (0.3, 0.7, 0.0, 0.1), (0.5, 0.5, 1.0, 0.1),
            (0.5, 0.5, 0.5, 1.0)]
ROWS, WIDTH = 384, 384  # one padded batch shape: compute_ntl_info compiles once
OFFSETS = [Fraction(x) for x in ("1", "2", "9", "10", "11", "99", "100", "101", "999", "1000", "0.5", "0.25",
                                 "0.01")]


def fmt(value: Fraction) -> str:
    """The exact decimal text of a finite decimal."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = (value * 10**digits).numerator
    whole, frac = divmod(scaled, 10**digits)
    return sign + str(whole) + (f".{frac:0{digits}d}" if digits else "")


def with_commas(text: str) -> str:
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, point, frac = body.partition(".")
    groups = [whole[max(0, i - 3):i] for i in range(len(whole), 0, -3)][::-1]
    return sign + ",".join(groups) + point + frac


def answers_for(truth: Fraction) -> list[Fraction]:
    """Near and far misses on both sides and at the truth's own scale, sign flips, zero and shifted digits."""
    scale = max(abs(truth), Fraction(1))
    grid = {truth, Fraction(0), -truth, truth * 10, truth / 10}
    grid |= {truth + d for d in OFFSETS} | {truth - d for d in OFFSETS}
    grid |= {truth + scale * f for f in (Fraction(1, 100), Fraction(1, 10), Fraction(1, 2))}
    grid |= {truth - scale * f for f in (Fraction(1, 100), Fraction(1, 10), Fraction(1, 2))}
    return sorted(v for v in grid if abs(v) < 10**13 and (v * 10**6).denominator == 1)


def formats(source: str, value: Fraction, truth_text: str) -> list[str]:
    """The texts a policy could write for ``value`` that its scorer reads as ``value``."""
    text = fmt(value)
    decoy = truth_text if value != Fraction(truth_text.replace(",", "")) else fmt(value + 1)
    texts = [f"#### {text}", f"#### {decoy}\n#### {text}", f"12 + 30 = 42\nSo: #### {text}",
             f"#### {text} dollars."]
    if abs(value) >= 1000:
        texts.append(f"#### {with_commas(text)}")
    if source == "arithmetic":
        texts += [f"####\t{text}", f"#### {text.replace('-', '-00') if value < 0 else '00' + text}",
                  f"The answer is {text}.", f"#### {text}{'0' if '.' in text else '.0'}"]
    else:
        texts += [f"#### {text[0]},{text[1:]}" if len(text) > 1 and text[1].isdigit() else f"#### ,{text}",
                  f"#### 0{text}" if value >= 0 else f"#### -0{text[1:]}"]
    return texts


HOSTILE = ["I do not know.", "####", "#### so", "####18", "#### $18", "#### ١٨", "#### １８", "#### 1.8.0",
           "#### 18" + " filler" * 50, "#### " + "9" * 250, "#### --18", "#### -", "#### .", "#### ,",
           "#### 18 #### 17", "#### 17\n#### 18\n#### -0", "#### 1e3", "#### nan", "#### inf"]


def scorer_value(source: str, text: str) -> Fraction | None:
    """The number the scorer reads, through the scorer's own public extraction."""
    extracted = arithmetic.extract_answer(text) if source == "arithmetic" else gsm8k.extract_solution(text)
    return None if extracted is None else number_value(extracted)


def _confident_logits(ids: np.ndarray, digit_ids: np.ndarray, confidence: float) -> np.ndarray:
    written = np.full(ids.shape, -1)
    for digit, token in enumerate(digit_ids):
        written[ids == token] = digit
    return np.where(written[..., None] == np.arange(10), confidence, 0.0).astype(np.float32)


def _hedged_logits(logits: np.ndarray, target_digits: np.ndarray, confidence: float) -> np.ndarray:
    """Each written digit's mass split evenly with another digit: the true one where it differs, else the next."""
    written = np.argmax(logits, axis=-1)
    is_digit = logits.max(axis=-1) > 0
    other = np.where((target_digits >= 0) & (target_digits != written), target_digits, (written + 1) % 10)
    hedged = logits.copy()
    rows, cols = np.nonzero(is_digit)
    hedged[rows, cols, other[rows, cols]] = confidence
    return hedged


class Path:
    """The project's reward path for a batch of texts against one truth."""

    def __init__(self):
        self.tokenizer = build_char_tokenizer()
        self.digit_ids = digit_token_ids(self.tokenizer)

    def infos(self, source: str, truth: str, texts: list[str], mode: str = "final_answer"):
        """{(confidence, hedged): NTLInfo on host} for ``texts``, each padded into one [ROWS, WIDTH] batch."""
        assert len(texts) <= ROWS
        ids = np.zeros((ROWS, WIDTH), np.int32)
        mask = np.zeros((ROWS, WIDTH), np.int32)
        for row, text in enumerate(texts):
            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            assert len(encoded) <= WIDTH, text
            ids[row, : len(encoded)], mask[row, : len(encoded)] = encoded, 1
        rows = len(texts)
        padded = [source] * rows + [None] * (ROWS - rows)
        batch = build_batch_targets(ids, mask, [truth] * ROWS, self.tokenizer, self.digit_ids, mode,
                                    data_sources=padded)
        targets = DigitTargets.from_batch(batch)
        out = {}
        for confidence in CONFIDENCES:
            confident = _confident_logits(ids, self.digit_ids, confidence) * mask[..., None]
            for hedged, logits in ((False, confident),
                                   (True, _hedged_logits(confident, batch.target_digits, confidence))):
                out[confidence, hedged] = compute_ntl_info(jnp.asarray(logits), targets, "wasserstein",
                                                           answer_texts=batch.answer_texts).to_host()
        return out


def reward(source, text, truth, ntl_info, setting):
    correct_weight, ntl_weight, confidence_weight, tau = setting
    return custom_ntl_reward(source, text, truth, ntl_info=ntl_info, tau=tau,
                             correct_weight=correct_weight, ntl_weight=ntl_weight,
                             confidence_weight=confidence_weight)["score"]


@pytest.fixture(scope="module")
def path():
    return Path()


@pytest.fixture(scope="module")
def grid(path):
    """{(source, truth): (texts, scorer values, correct flags, {(L, hedged, setting): scores}, {(L, hedged): q})}."""
    out = {}
    for source in SOURCES:
        for truth in TRUTHS:
            texts = [t for a in answers_for(Fraction(truth)) for t in formats(source, a, truth)] + HOSTILE
            values = [scorer_value(source, t) for t in texts]
            correct = np.asarray([(arithmetic.compute_score(t, truth)["acc"] if source == "arithmetic"
                                   else gsm8k.compute_score(t, truth)) == 1.0 for t in texts])
            scores, confidences = {}, {}
            for (confidence, hedged), info in path.infos(source, truth, texts).items():
                views = [info.sample_view(i) for i in range(len(texts))]
                confidences[confidence, hedged] = np.asarray([v["answer_confidence"] for v in views])
                for setting in SETTINGS:
                    scores[confidence, hedged, setting] = np.asarray(
                        [reward(source, t, truth, views[i], setting) for i, t in enumerate(texts)])
            out[source, truth] = texts, values, correct, scores, confidences
    return out


def same_confidence(confidences: dict, setting_key: tuple) -> np.ndarray:
    """[n, n] pairs at one confidence: every pair when the setting ignores confidence, else pairs whose measured
    ``answer_confidence`` is equal (float32 softmaxes of one logit vector differ by an ulp with the max's index)."""
    confidence, hedged, (_, _, confidence_weight, _) = setting_key
    q = confidences[confidence, hedged]
    if confidence_weight == 0:
        return np.ones((len(q), len(q)), bool)
    return q[:, None] == q[None, :]


def test_the_grid_is_what_it_claims(grid):
    assert len(grid) == len(SOURCES) * len(TRUTHS)
    for (source, truth), (texts, values, correct, scores, confidences) in grid.items():
        assert correct.sum() >= 4 and (~correct).sum() >= 100, (source, truth)
        assert len(scores) == len(CONFIDENCES) * 2 * len(SETTINGS)
        assert any(v is None for v in values)  # hostile texts without an answer are in every group
    texts, _, correct, _, _ = grid["openai/gsm8k", "1234"]
    accepted = {t for t, ok in zip(texts, correct) if ok}
    assert {"#### 1234", "#### 1,234", "#### 1234 dollars.", "#### 1235\n#### 1234"} <= accepted
    assert "#### 01234" in texts and "#### 01234" not in accepted  # verl compares strings
    texts, _, correct, _, _ = grid["arithmetic", "-0.75"]
    accepted = {t for t, ok in zip(texts, correct) if ok}
    assert {"#### -0.75", "#### -000.75", "The answer is -0.75.", "#### -0.750", "####\t-0.75"} <= accepted


def test_a_correct_answer_scores_strictly_above_every_wrong_one(grid):
    for key, (texts, _, correct, scores, _) in grid.items():
        for setting_key, s in scores.items():
            assert s[correct].min() > s[~correct].max(), (key, setting_key, texts[int(np.argmax(
                np.where(correct, -np.inf, s)))])


def test_a_strictly_closer_wrong_answer_never_scores_lower(grid):
    """All pairs of wrong answers that the scorer reads as numbers, at one confidence and one setting."""
    for (source, truth), (texts, values, correct, scores, confidences) in grid.items():
        truth_value = Fraction(truth)
        wrong = [i for i, v in enumerate(values) if v is not None and not correct[i]]
        distance = np.asarray([abs(values[i] - truth_value) for i in wrong], dtype=object)
        ranks = np.unique(distance, return_inverse=True)[1]  # exact ordering of the Fractions
        closer = ranks[:, None] < ranks[None, :]
        for setting_key, s in scores.items():
            lower = s[wrong][:, None] < s[wrong][None, :]
            bad = np.argwhere(closer & lower & same_confidence(confidences, setting_key)[np.ix_(wrong, wrong)])
            assert bad.size == 0, (source, truth, setting_key,
                                   [(texts[wrong[i]], texts[wrong[j]]) for i, j in bad[:3]])


def test_no_answer_or_no_number_is_never_above_a_wrong_number(grid):
    for key, (texts, values, correct, scores, confidences) in grid.items():
        unread = np.asarray([v is None for v in values]) & ~correct
        numbers = np.asarray([v is not None for v in values]) & ~correct
        for setting_key, s in scores.items():
            assert s[unread].max() <= s[numbers].min(), (key, setting_key)
            assert s[unread].max() == 0.0


def test_the_bonus_grades_the_scorers_number(grid):
    """Texts whose scorer reads the same number (and agrees on correctness) score the same: decoy answers, commas,
    leading zeros, units and text around the number change nothing."""
    for key, (texts, values, correct, scores, confidences) in grid.items():
        groups: dict = {}
        for i, (value, ok) in enumerate(zip(values, correct)):
            if value is not None:
                groups.setdefault((value, bool(ok)), []).append(i)
        assert max(map(len, groups.values())) >= 4
        for setting_key, s in scores.items():
            at_one_confidence = same_confidence(confidences, setting_key)
            for group_key, rows in groups.items():
                for row in rows:
                    peers = [r for r in rows if at_one_confidence[row, r]]
                    assert np.all(s[peers] == s[row]), (key, setting_key, [texts[r] for r in peers])


def test_hedging_never_pays(grid):
    for key, (texts, _, correct, scores, _) in grid.items():
        for (confidence, hedged, setting), s in scores.items():
            if hedged:
                gain = s - scores[confidence, False, setting]
                assert gain.max() <= 1e-12, (key, confidence, setting, texts[int(np.argmax(gain))])
                if setting[2] > 0:  # confidence enters: a hedged wrong number is paid strictly less
                    lowered = scores[confidence, False, setting] > 0
                    assert np.all(gain[~correct & lowered] < 0)


STEP_REWRITES = [  # (a wrong checkable step, the same claim made uncheckable), final answer, truth
    ("7*6=41", "7*6 is 41", "#### 42", "42"),
    ("7 * 6 = 41", "seven sixes are 41", "#### 41", "42"),
    ("12 + 30 = 41", "12 and 30 make 41", "#### 41", "42"),
    ("<<12+30=41>>41", "41", "#### 41", "42"),
    ("3 + 4 + 5 = 13", "3, 4 and 5 sum to 13", "#### 13", "12"),
    ("(2 + 3) * 4 = 21", "2 + 3 then times 4 is 21", "#### 20", "20"),
    ("10 - 3 = 6", "10 less 3 is 6", "#### 7", "7"),
]


@pytest.mark.parametrize("mode", ["all_tokens", "hybrid"])
def test_hiding_a_wrong_step_or_padding_right_ones_never_raises_the_reward(path, mode):
    for source in SOURCES:
        texts, pairs = [], []
        for checked, hidden, answer, truth in STEP_REWRITES:
            base = len(texts)
            texts += [f"{checked}\n{answer}", f"{hidden}\n{answer}", f"1+1=2\n2+2=4\n3+3=6\n{hidden}\n{answer}"]
            pairs.append((base, truth))
        for (base, truth) in pairs:
            infos = path.infos(source, truth, texts[base:base + 3], mode)
            assert int(np.sum(np.asarray(infos[8.0, False].digit_positions[0]))) > \
                int(np.sum(np.asarray(infos[8.0, False].digit_positions[1]))) or mode == "hybrid"
            for (confidence, hedged), info in infos.items():
                for setting in SETTINGS:
                    checked, hidden, padded = (reward(source, texts[base + k], truth, info.sample_view(k), setting)
                                               for k in range(3))
                    assert hidden <= checked and padded <= checked, (source, texts[base], setting, confidence)


@pytest.mark.parametrize("weights", [(0.0, 0.5), (-0.1, 0.5), (0.5, -0.1), (math.nan, 0.5), (0.5, math.inf),
                                     (math.inf, 0.5)])
def test_weights_that_could_rank_a_wrong_answer_first_are_refused(weights):
    correct_weight, ntl_weight = weights
    with pytest.raises(ValueError) as err:
        custom_ntl_reward("arithmetic", "#### 18", "18", correct_weight=correct_weight, ntl_weight=ntl_weight)
    message = str(err.value)
    assert "\n" not in message and "allowed: a finite number" in message
    assert ("correct_weight" if correct_weight != 0.5 else "ntl_weight") in message


@pytest.mark.parametrize("correct_weight, ntl_weight", [(1e-9, 1e9), (0.3, 0.7), (1.0, 0.0), (2.0, 5.0)])
def test_every_accepted_weight_pair_keeps_a_correct_answer_first(path, correct_weight, ntl_weight):
    truth = "1000"
    texts = [f"#### {a}" for a in ("1000", "999", "1001", "0", "-1000", "1000.5")]
    infos = path.infos("arithmetic", truth, texts)
    for (confidence, hedged), info in infos.items():
        scores = [reward("arithmetic", t, truth, info.sample_view(i), (correct_weight, ntl_weight, 0.0, 0.1))
                  for i, t in enumerate(texts)]
        assert scores[0] > max(scores[1:]), scores


def test_the_cases_that_broke_the_seeds_reward(path):
    """Each case of the issue that found the reward gameable, through the full path at its confidence."""
    def scores(source, truth, texts, confidence=8.0, hedged=False, setting=SETTINGS[0], mode="final_answer"):
        info = path.infos(source, truth, texts, mode)[confidence, hedged]
        return [reward(source, t, truth, info.sample_view(i), setting) for i, t in enumerate(texts)]

    near, far = scores("arithmetic", "1234", ["#### 1244", "#### 1223"])
    assert near > far  # the expected-digit bonus paid 1223 (off by 11) more than 1244 (off by 10)
    right, wrong = scores("arithmetic", "18", ["#### 18", "#### 16"], confidence=5.0)
    assert right == 1.0 and wrong < 0.5
    # A correct answer written hesitantly is still a correct answer: a GRPO group ranks it first.
    group = scores("arithmetic", "100", ["#### 100"] + ["#### 90"] + ["I do not know."] * 6, confidence=5.0,
                   hedged=True)
    advantages = (np.asarray(group) - np.mean(group)) / (np.std(group, ddof=1) + 1e-6)
    assert advantages[0] > 0 and advantages[0] == advantages.max()
    # Blind spots: what the scorer accepts is graded as written; what it does not read scores the floor.
    comma, plain, split = scores("openai/gsm8k", "18", ["#### ,18", "#### 18", "#### 1,8"])
    assert comma == plain == split == 1.0
    decoy, near = scores("openai/gsm8k", "18", ["#### 5\n#### $18", "#### 17"])
    assert decoy < near
    assert scores("arithmetic", "3", ["10-3"])[0] == 1.0
    assert scores("arithmetic", "0", ["#### -0"])[0] == 1.0
    # Hedging: 27 against 18 written with the tens split 0/2 and the units 7/9 earns no more than written surely.
    assert scores("arithmetic", "18", ["#### 27"], hedged=True) <= scores("arithmetic", "18", ["#### 27"])
    # Hiding work: the checked wrong step and the hidden one score the same.
    shown, hidden = scores("arithmetic", "42", ["7*6=41\n#### 42", "7*6 is 41\n#### 42"], mode="all_tokens")
    assert shown == hidden == 1.0
    # Edges: leading zeros and a 21-digit answer are correct answers; 0.3 / 0.7 still ranks the right one first.
    assert scores("arithmetic", "18", ["#### 000018"])[0] == 1.0
    assert scores("arithmetic", "123456789012345678901", ["#### 123456789012345678901"])[0] == 1.0
    wrong, right = scores("arithmetic", "1000", ["#### 999", "#### 1000"], setting=(0.3, 0.7, 0.0, 0.1))
    assert right == 1.0 > wrong
