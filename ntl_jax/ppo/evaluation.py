"""Validation: greedy (``val_temperature=0``) generation over held-out rows, scored by the run's reward function.

Returns ``val-core/<data_source>/{acc,reward}/mean@1`` and ``val-aux/<data_source>/<key>/mean@1`` for every numeric
extra the reward function returns (e.g. ``abs_error`` and ``digit_acc`` on the arithmetic task), verl's names, and
``val-aux/<data_source>/abs_error/median@1`` (the median absolute error of the answer).
Validation rewards get no ``ntl_info``: they measure the answer, not the shaping.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jax
import numpy as np

from ntl_jax.data.verl_parquet import PromptDataset
from ntl_jax.models.sampler import SamplingParams
from ntl_jax.rewards.scoring import reward_item
from ntl_jax.rewards.sharded import score_once_across_processes


# Extras whose median is logged beside their mean: a few far answers move an error's mean, not its median.
MEDIAN_KEYS = ("abs_error",)


def evaluate(rollout: Any, params: Any, rows: list[dict], tokenizer: Any, reward_runner: Any,
             sampling: SamplingParams, *, max_prompt_length: int, truncation: str, filter_overlong_prompts: bool,
             batch_size: int, seed: int, pad_id: int, n: int = 1,
             samples: list[tuple[dict, str]] | None = None) -> dict[str, float]:
    """Generate for ``rows`` ``batch_size`` prompts at a time with ``rollout`` and ``params``; score; average.

    ``sampling.n`` responses per prompt; ``samples``, when given, receives every (row, response text)."""
    dataset = PromptDataset(rows, tokenizer, max_prompt_length=max_prompt_length, truncation=truncation,
                            filter_overlong_prompts=filter_overlong_prompts, source="val")
    rng = jax.random.key(seed + 1)
    per_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        gen = rollout.generate(params, [ids for ids, _, _ in items], sampling, rng,
                               prompt_indices=[index for _, _, index in items])
        texts = tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, pad_id),
                                       skip_special_tokens=True)
        items = [item for item in items for _ in range(sampling.n)]  # row i * n + j: prompt i's j-th response
        if samples is not None:
            samples.extend((row, text) for (_, row, _), text in zip(items, texts))
        result = score_once_across_processes(reward_runner, [reward_item(row, text)
                                                             for (_, row, _), text in zip(items, texts)])
        scores = np.asarray(result.scores, np.float32)
        accs = [float(e.get("acc", s)) for e, s in zip(result.extras, scores)]
        for (_, row, _), score, acc, extra in zip(items, scores, accs, result.extras):
            bucket = per_source[row.get("data_source", "")]
            bucket["reward"].append(float(score))
            bucket["acc"].append(float(acc))
            for key, value in extra.items():
                if key != "acc" and isinstance(value, (int, float, bool)):
                    bucket[key].append(float(value))
    out = {}
    for source, bucket in per_source.items():
        for key, values in bucket.items():
            group = "val-core" if key in ("acc", "reward") else "val-aux"
            out[f"{group}/{source}/{key}/mean@{n}"] = float(np.mean(values))
            if key in MEDIAN_KEYS:
                out[f"{group}/{source}/{key}/median@{n}"] = float(np.median(values))
    return out
