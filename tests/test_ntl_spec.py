"""The digit-target specification in docs/NTL.md, executed: every row of its worked-example table is checked.

Each row gives a response, a ground truth, the targets of the response's digit tokens, the missing answer digits,
the sign and answer flags, and, for a policy confident in the digits it wrote (logit 8 on each), the number error
and the per-sequence Wasserstein NTL. Rows are checked with the character tokenizer and with a Qwen-style
byte-level BPE (digits split into single tokens, as Qwen2.5 does), which must give the same targets.
"""
from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.models.tokenizers import build_char_tokenizer, train_byte_level_bpe
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets, compute_ntl_info
from ntl_jax.ntl.targets import build_batch_targets, token_char_offsets

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "NTL.md")
HYBRID_WEIGHT = 0.75


def spec_rows() -> list[dict]:
    text = open(SPEC, encoding="utf-8").read()
    table = text.split("<!-- spec-table:", 1)[1].split("<!-- end spec-table -->", 1)[0]
    rows = []
    for line in table.splitlines()[3:]:  # the comment, the header, the rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        mode, extraction, response, truth, targets, missing, sign, answer, bad, error, loss = cells
        rows.append({
            "mode": mode, "extraction": extraction, "response": response.strip("`").replace("\\n", "\n"),
            "truth": truth.strip("`"),
            "targets": [] if targets == "–" else [tuple(p.split("→")) for p in targets.split()],
            "missing": int(missing), "sign_wrong": sign == "yes", "has_answer": answer == "yes",
            "bad_truth": bad == "yes", "number_error": None if error == "–" else float(error), "ntl_loss": float(loss),
        })
    return rows


ROWS = spec_rows()


@pytest.fixture(scope="module")
def tokenizers():
    corpus = [row["response"] for row in ROWS] * 5 + ["The answer is 42 apples and 12 + 30 = 42."] * 5
    return {"char": build_char_tokenizer("−"), "bpe": train_byte_level_bpe(corpus, vocab_size=300)}


def test_the_table_covers_the_cases_the_spec_names():
    assert len(ROWS) >= 25
    kinds = {row["mode"] for row in ROWS}
    assert kinds == {"final_answer", "all_tokens", "hybrid"}
    assert any(row["sign_wrong"] for row in ROWS) and any(row["bad_truth"] for row in ROWS)
    assert any(row["missing"] for row in ROWS) and any("," in row["response"] for row in ROWS)


def _targets(row: dict, tokenizer) -> tuple[list[tuple[str, str]], object, object]:
    ids = tokenizer.encode(row["response"], add_special_tokens=False)
    digit_ids = digit_token_ids(tokenizer)
    batch = build_batch_targets(np.asarray([ids]), np.ones((1, len(ids)), np.int32), [row["truth"]], tokenizer,
                                digit_ids, row["mode"], answer_extraction=row["extraction"],
                                hybrid_weight=HYBRID_WEIGHT)
    text, spans = token_char_offsets(ids, tokenizer)
    pairs = [(text[s:e], str(y)) for (s, e), y in zip(spans, batch.target_digits[0]) if y >= 0]
    # The confident policy: logit 8 on the digit each token wrote.
    written = np.array([[digit_ids.tolist().index(i) if i in digit_ids else -1 for i in ids]])
    logits = np.where(written[..., None] == np.arange(10), 8.0, 0.0).astype(np.float32)
    answer_weight = HYBRID_WEIGHT if row["mode"] == "hybrid" else 1.0
    info = compute_ntl_info(jnp.asarray(logits), DigitTargets.from_batch(batch, answer_weight), "wasserstein")
    return pairs, batch, info.to_host()


@pytest.mark.parametrize("tokenizer_name", ["char", "bpe"])
@pytest.mark.parametrize("row", ROWS, ids=[f"{r['mode']}:{r['response']}:{r['truth']}" for r in ROWS])
def test_spec_row(tokenizers, tokenizer_name, row):
    pairs, batch, info = _targets(row, tokenizers[tokenizer_name])
    assert pairs == row["targets"]
    assert int(batch.missing_digits[0]) == row["missing"]
    assert bool(batch.sign_wrong[0]) is row["sign_wrong"]
    assert bool(batch.has_answer[0]) is row["has_answer"]
    assert bool(batch.bad_ground_truth[0]) is row["bad_truth"]
    assert bool(info.has_answer[0]) is row["has_answer"]
    if row["number_error"] is not None:
        assert float(info.number_error[0]) == pytest.approx(row["number_error"], abs=1.5e-3)
    assert float(info.per_sequence_loss[0]) == pytest.approx(row["ntl_loss"], abs=0.015)


def test_hybrid_weights_answer_and_steps(tokenizers):
    row = next(r for r in ROWS if r["mode"] == "hybrid")
    _, batch, _ = _targets(row, tokenizers["char"])
    targeted = batch.target_digits[0] >= 0
    assert batch.weights[0][targeted].tolist() == [1 - HYBRID_WEIGHT, HYBRID_WEIGHT]
    assert batch.is_final_answer[0][targeted].tolist() == [False, True]


def test_places_numbers_and_truths_for_number_level_losses(tokenizers):
    tokenizer = tokenizers["char"]
    ids = tokenizer.encode("12 + 30 = 41, #### -1,234.5", add_special_tokens=False)
    batch = build_batch_targets(np.asarray([ids]), np.ones((1, len(ids)), np.int32), ["1234.5"], tokenizer,
                                digit_token_ids(tokenizer), "all_tokens")
    targeted = batch.target_digits[0] >= 0
    assert batch.places[0][targeted].tolist() == [1, 0, 3, 2, 1, 0, -1]
    assert batch.number_index[0][targeted].tolist() == [1, 1, 0, 0, 0, 0, 0]  # the step, then the answer
    # The truth as the response's sign sees it: the answer wrote -1,234.5 for 1234.5.
    assert batch.number_truth[0][targeted].tolist() == [42, 42, -1234.5, -1234.5, -1234.5, -1234.5, -1234.5]
    assert bool(batch.sign_wrong[0]) and float(batch.answer_truth[0]) == -1234.5


def test_a_bad_ground_truth_never_raises_and_is_counted(tokenizers):
    tokenizer = tokenizers["char"]
    ids = tokenizer.encode("#### 3", add_special_tokens=False)
    truths = ["3/4", "5%", "three", "", "1.2.3", "--4"]
    batch = build_batch_targets(np.asarray([ids] * len(truths)), np.ones((len(truths), len(ids)), np.int32), truths,
                                tokenizer, digit_token_ids(tokenizer), "all_tokens")
    assert batch.bad_ground_truth.tolist() == [True] * len(truths)
    assert np.all(batch.target_digits == -1) and np.all(batch.weights == 0)


def test_the_doc_states_the_loss_aggregation_the_code_uses():
    text = open(SPEC, encoding="utf-8").read()
    assert re.search(r"NTL \(token-mean\) = sum over digit positions of w_t \* ntl_t", text)
