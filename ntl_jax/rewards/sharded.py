"""Rewards scored once per iteration across processes: each process scores every P-th response and all processes
receive every result, instead of every host scoring the whole batch (P times the reward work; P Ray pools busy with
the same texts when ``reward_runner='ray'``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ntl_jax.distributed.multihost import all_gather_objects, process_count, process_index
from ntl_jax.rewards.workers import RewardResult


def score_once_across_processes(runner: Any, items: list[dict]) -> RewardResult:
    """``runner.score(items)`` with the items split over the processes: process p scores items p, p + P, p + 2P, ...
    (interleaved, so a batch ordered by prompt spreads each prompt's responses), then every process gets all scores
    and extras in the items' order, and the error / timeout counts summed. Single process: ``runner.score(items)``.
    Every process must call it at the same point with the same items."""
    count, index = process_count(), process_index()
    if count == 1:
        return runner.score(items)
    mine = items[index::count]
    part = runner.score(mine) if mine else RewardResult(np.zeros(0, np.float32), [], 0, 0)
    parts = all_gather_objects((np.asarray(part.scores, np.float32), list(part.extras), int(part.num_errors),
                                int(part.num_timeouts)))
    scores = np.zeros(len(items), np.float32)
    extras: list[dict] = [{} for _ in items]
    for process, (part_scores, part_extras, _, _) in enumerate(parts):
        rows = range(process, len(items), count)
        if len(part_scores) != len(rows):
            raise RuntimeError(f"process {process} scored {len(part_scores)} responses; allowed: {len(rows)} (every "
                               "process must score the same items)")
        scores[process::count] = part_scores
        for row, extra in zip(rows, part_extras):
            extras[row] = extra
    return RewardResult(scores, extras, sum(p[2] for p in parts), sum(p[3] for p in parts))
