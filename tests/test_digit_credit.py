"""Digit credit (ntl_jax/ntl/credit.py): token-level credit at NTL's digit targets, added to the advantages.

The properties are checked over all pairs of a group, on real targets from hand-written and hostile responses
(char tokenizer), and through the trainer: the credit changes the advantages at targeted digits and nowhere else.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ntl_jax.models.tokenizers import build_char_tokenizer
from ntl_jax.ntl.config import NTLConfig
from ntl_jax.ntl.credit import digit_credit
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ntl.targets import build_batch_targets
from ntl_jax.ppo.ntl_step import NTLStage, NTLStep
from ntl_jax.ppo.trainer import PPOTrainer

TRUTH = "1234"
# One prompt's group: right, near misses at different places, a hedge, a padded one, a longer and a shorter answer.
GROUP = [
    "1000 + 234 = 1234\n#### 1234",
    "1000 + 234 = 1234\n#### 1244",
    "1000 + 234 = 1334\n#### 1334",
    "1000 + 234 = 1234\n#### 12340",
    "#### 234",
    "1 + 1 = 2\n2 + 2 = 4\n1000 + 234 = 1234\n#### 1234",
    "1000 + 234 = 1234\n#### 1234 or 1235",
    "no answer here",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def encode(texts, tokenizer):
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


def targets_of(texts, tokenizer, mode, truths=None):
    ids, mask = encode(texts, tokenizer)
    digit_ids = digit_token_ids(tokenizer)
    batch = build_batch_targets(ids, mask, truths or [TRUTH] * len(texts), tokenizer, digit_ids, mode)
    return ids, DigitTargets.from_batch(batch), digit_ids


def credit_of(ids, targets, digit_ids, group_ids):
    return digit_credit(ids, targets.target_digits, targets.weights, targets.layout.number_ids,
                        targets.layout.places, group_ids, digit_ids)


@pytest.mark.parametrize("mode", ["final_answer", "all_tokens", "hybrid"])
def test_properties_over_all_pairs_of_a_group(tokenizer, mode):
    ids, targets, digit_ids = targets_of(GROUP, tokenizer, mode)
    credit, correct = credit_of(ids, targets, digit_ids, np.zeros(len(GROUP), np.int64))
    targeted = targets.weights > 0
    assert targeted.any()
    # Nothing outside the targets: the tokens that choose to write a step or an answer get no credit.
    assert np.all(credit[~targeted] == 0) and np.all(correct[~targeted] == 0)
    keys = {}
    for b, t in zip(*np.nonzero(targeted)):
        keys.setdefault((targets.layout.number_ids[b, t], targets.layout.places[b, t]), []).append((b, t))
    for key, cells in keys.items():
        assert len({b for b, _ in cells}) == len(cells), f"a response holds key {key} twice"
        # Zero sum at every key: no net push toward more or fewer digits.
        assert sum(credit[b, t] for b, t in cells) == pytest.approx(0.0, abs=1e-6)
        for (b1, t1), (b2, t2) in itertools.permutations(cells, 2):
            if correct[b1, t1] > correct[b2, t2]:  # every right digit above every wrong one at the same key
                assert credit[b1, t1] > credit[b2, t2]
            elif correct[b1, t1] == correct[b2, t2]:
                assert credit[b1, t1] == pytest.approx(credit[b2, t2])


def test_hand_computed_group_of_three(tokenizer):
    texts = ["#### 1234", "#### 1244", "#### 1334"]
    ids, targets, digit_ids = targets_of(texts, tokenizer, "final_answer")
    credit, correct = credit_of(ids, targets, digit_ids, np.zeros(3, np.int64))
    got = [credit[b][targets.weights[b] > 0] for b in range(3)]
    # Thousands: all right (credit 0). Hundreds and tens: 2 of 3 right (baseline 2/3). Units: all right.
    third, two_thirds = 1 / 3, 2 / 3
    want = [[0.0, third, third, 0.0], [0.0, third, -two_thirds, 0.0], [0.0, -two_thirds, third, 0.0]]
    np.testing.assert_allclose(np.stack(got), want, atol=1e-6)


def test_groups_do_not_share_a_baseline_and_a_lone_place_gets_nothing(tokenizer):
    texts = ["#### 1234", "#### 1235", "#### 12340", "#### 1234"]
    ids, targets, digit_ids = targets_of(texts, tokenizer, "final_answer")
    credit, _ = credit_of(ids, targets, digit_ids, np.array([0, 0, 1, 1]))
    # Group 0: the units differ (one right, one wrong): +0.5 / -0.5. Group 1: the 5-digit answer's leading digit is
    # the only one at its place (credit 0); its other places are all shifted, so each is wrong against a right one.
    assert credit[0][targets.weights[0] > 0].tolist() == [0.0, 0.0, 0.0, 0.5]
    assert credit[1][targets.weights[1] > 0].tolist() == [0.0, 0.0, 0.0, -0.5]
    row2 = credit[2][targets.weights[2] > 0]
    assert row2[0] == 0.0 and np.all(row2[1:] <= 0)


def test_a_token_that_is_not_one_digit_counts_as_wrong(tokenizer):
    ids, targets, digit_ids = targets_of(["#### 1234", "#### 1234"], tokenizer, "final_answer")
    hostile = ids.copy()
    units = np.flatnonzero(targets.weights[1] > 0)[-1]
    hostile[1, units] = tokenizer.encode("x", add_special_tokens=False)[0]  # the target stays, the digit does not
    credit, correct = credit_of(hostile, targets, digit_ids, np.zeros(2, np.int64))
    assert correct[1, units] == 0 and credit[1, units] < 0 < credit[0, units]


def test_hybrid_weights_scale_the_credit(tokenizer):
    ids, targets, digit_ids = targets_of(["#### 1234", "#### 1235"], tokenizer, "final_answer")
    half = DigitTargets(**{**targets.__dict__, "weights": targets.weights * 0.5})
    full, _ = credit_of(ids, targets, digit_ids, np.zeros(2, np.int64))
    scaled, _ = credit_of(ids, half, digit_ids, np.zeros(2, np.int64))
    np.testing.assert_allclose(scaled, 0.5 * full)


def test_stage_scales_by_digit_credit_and_is_off_at_zero(tokenizer):
    ids, targets, digit_ids = targets_of(["#### 1234", "#### 1235"], tokenizer, "final_answer")
    step = NTLStep(targets, weight=0.1)
    off = NTLStage(NTLConfig(enabled=True), tokenizer, digit_ids, ".")
    assert off.credit(step, ids, group_size=2) == (None, {})
    on = NTLStage(NTLConfig(enabled=True, digit_credit=0.5), tokenizer, digit_ids, ".")
    credit, metrics = on.credit(step, ids, group_size=2)
    raw, _ = credit_of(ids, targets, digit_ids, np.zeros(2, np.int64))
    np.testing.assert_allclose(credit, 0.5 * raw)
    assert metrics["ntl/digit_credit/targeted_digit_acc"] == pytest.approx(7 / 8)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1"])
def test_bad_digit_credit_is_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="digit_credit") as err:
        NTLConfig(enabled=True, digit_credit=bad)
    first = str(err.value).splitlines()[0]  # gin appends the configurable's name on a second line
    assert "digit_credit" in first and "allowed" in first


def test_digit_credit_without_ntl_is_refused():
    with pytest.raises(ValueError, match="digit_credit.*NTL is off"):
        NTLConfig(enabled=False, digit_credit=0.5)


def test_trainer_adds_the_credit_to_the_advantages_at_targeted_digits_only(tmp_path, monkeypatch):
    """Same seed with and without credit: the same rollout, advantages that differ by exactly the credit."""
    from test_trainer import _trainer  # the tiny trainer of the end-to-end tests
    from trainer_fixtures import make_tiny_policy, tiny_experiment
    import dataclasses

    policy_dir = make_tiny_policy(str(tmp_path / "policy"))
    seen = {}

    def spy(self, rollout, ntl_weight, timings):
        seen.setdefault(self.config.ntl.digit_credit, []).append(
            (np.asarray(rollout.advantages), np.asarray(rollout.response_mask), np.asarray(rollout.ntl.weights)))
        return {}

    monkeypatch.setattr(PPOTrainer, "update", spy)
    credits = {}
    for weight in (0.0, 2.0):
        base = tiny_experiment(str(tmp_path / f"run_{weight}"), use_ntl=True, reward_mode="all_tokens", steps=1)
        config = dataclasses.replace(base, ntl=dataclasses.replace(base.ntl, digit_credit=weight))
        trainer = _trainer(config, policy_dir, val_rows=[])
        original = trainer.ntl_stage.credit

        def record(*args, _weight=weight, _original=original, **kwargs):
            credits[_weight] = _original(*args, **kwargs)
            return credits[_weight]

        trainer.ntl_stage.credit = record
        try:
            trainer.train_step(trainer.loader.next_batch())
        finally:
            trainer.close()
    (plain, mask, weights), = seen[0.0]
    (with_credit, mask2, weights2), = seen[2.0]
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(weights, weights2)
    credit, metrics = credits[2.0]
    assert credits[0.0] == (None, {})
    assert (weights > 0).any() and "ntl/digit_credit/abs_mean" in metrics
    np.testing.assert_allclose(with_credit - plain, credit * mask, atol=1e-6)
    assert np.all((with_credit - plain)[weights == 0] == 0)
