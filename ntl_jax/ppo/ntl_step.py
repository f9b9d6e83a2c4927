"""The NTL part of one PPO iteration: targets before the log-prob pass, ``NTLInfo`` after it, before rewards.

Standard PPO and PPO + NTL run the same loop (``ntl_jax.ppo.trainer``); what differs is data. With NTL off an
iteration's :class:`NTLStep` has no targets, weight 0 and no ``ntl_info``, and nothing here touches the batch.
With NTL on:

1. :meth:`NTLStage.targets` turns the sampled responses and their ground truths into per-token digit targets
   (``ntl_jax.ntl.targets``, docs/NTL.md);
2. :meth:`NTLStage.summarize` turns the log-prob pass's digit slice and those targets into ``NTLInfo`` and the
   step's tau;
3. :meth:`NTLStage.reward_kwargs` gives each ``compute_score`` call its ``ntl_info`` view and ``tau``;
4. :meth:`NTLStage.credit` gives the advantages token-level credit at the targeted digits when
   ``digit_credit > 0`` (``ntl_jax.ntl.credit``);
5. the actor loss adds ``weight * NTL`` from its own forward's digit slice (``ntl_jax.ppo.steps.actor_loss``).

One :class:`NTLStage` per run, built from ``NTLConfig``, answers all of these; what NTL carries from one iteration
to the next (failure counters, the running mean number error that an adaptive tau follows) is its
:class:`NTLTracker`, saved in checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

import numpy as np

from ntl_jax.distributed.multihost import to_host
from ntl_jax.models.sampler import GenerationOutput
from ntl_jax.ntl.config import NTLConfig
from ntl_jax.ntl.credit import digit_credit
from ntl_jax.ntl.info import DigitTargets, NTLInfo, compute_ntl_info
from ntl_jax.ntl.schedules import update_running_mean
from ntl_jax.ntl.targets import build_batch_targets

log = logging.getLogger(__name__)


class NTLError(RuntimeError):
    """NTL could not be computed for a batch and ``fallback_on_error`` is off."""


@dataclasses.dataclass
class NTLTracker:
    """NTL's state across iterations: failure counters and the running mean number error (adaptive tau)."""

    counters: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "extraction_failures": 0, "batches_without_digits": 0, "bad_ground_truths": 0})
    running_error: float | None = None

    def state_dict(self) -> dict[str, Any]:
        finite = self.running_error is not None and math.isfinite(self.running_error)
        return {"ntl_counters": dict(self.counters), "ntl_running_number_error": self.running_error if finite else None}

    def load_state_dict(self, meta: dict[str, Any]) -> None:
        self.counters.update(meta.get("ntl_counters", {}))
        self.running_error = meta.get("ntl_running_number_error")


@dataclasses.dataclass(frozen=True)
class NTLStep:
    """The NTL record of one iteration: host targets, whether NTL applies this step, then ``info`` and ``tau``."""

    targets: DigitTargets
    weight: float  # NTLConfig.weight, or 0 (NTL off, or the step fell back to standard PPO)
    answer_texts: tuple[str | None, ...] | None = None  # the answer NTL read in each response (BatchTargets)
    info: NTLInfo | None = None
    tau: float = 0.0


class NTLStage:
    """NTL of one run, built once from its ``NTLConfig``: the loop asks it for an iteration's targets, for the
    ``NTLInfo`` after the log-prob pass and for each reward call's ``ntl_info`` and ``tau``; it owns what NTL
    carries across iterations (:class:`NTLTracker`). With NTL off every answer is standard PPO's: no targets,
    weight 0, no reward kwargs.
    """

    def __init__(self, cfg: NTLConfig, tokenizer: Any, digit_ids: np.ndarray | None, output_dir: str):
        if cfg.enabled and digit_ids is None:
            raise ValueError("NTLStage: NTL is enabled but the tokenizer's digit token ids were not given")
        self.cfg, self.tokenizer, self.digit_ids, self.output_dir = cfg, tokenizer, digit_ids, output_dir
        self.tracker = NTLTracker()

    @property
    def digit_logits_from_sampler(self) -> bool:
        """Whether the sampler should return the digit slice (``extract_during_generation``)."""
        return self.cfg.enabled and self.cfg.extract_during_generation

    def targets(self, gen: GenerationOutput, rows: list[dict], step: int) -> NTLStep:
        """Digit targets of the sampled responses (none, weight 0, with NTL off or after a tolerated failure)."""
        cfg, tracker = self.cfg, self.tracker
        empty = NTLStep(DigitTargets.empty(gen.response_ids.shape), weight=0.0)
        if not cfg.enabled:
            return empty

        def fallback(reason: str) -> NTLStep:
            tracker.counters["extraction_failures"] += 1
            if not cfg.fallback_on_error:
                raise NTLError(f"NTL failed at step {step}: {reason} (set NTLConfig.fallback_on_error=True to "
                               "continue with standard PPO for such steps)")
            log.warning("NTL failed at step %d (%s); running this step as standard PPO (fallback_on_error)", step,
                        reason)
            return empty

        ground_truths = [str(row["reward_model"]["ground_truth"]) for row in rows]
        try:
            batch = build_batch_targets(gen.response_ids, gen.response_mask, ground_truths, self.tokenizer,
                                        self.digit_ids, cfg.reward_mode, answer_extraction=cfg.answer_extraction,
                                        hybrid_weight=cfg.hybrid_weight,
                                        data_sources=[row.get("data_source") for row in rows])
        except Exception as err:  # noqa: BLE001 - any extraction failure is handled by the configured policy
            return fallback(f"{type(err).__name__}: {err}")
        tracker.counters["bad_ground_truths"] += int(batch.bad_ground_truth.sum())
        if not np.any(batch.weights > 0):
            if cfg.require_digits:
                return fallback("no response in the batch has a digit target (require_digits=True)")
            tracker.counters["batches_without_digits"] += 1
            log.info("step %d: no digit targets in the batch; rewards are standard for this step", step)
        answer_weight = cfg.hybrid_weight if cfg.reward_mode == "hybrid" else 1.0
        return NTLStep(DigitTargets.from_batch(batch, answer_weight), weight=float(cfg.weight),
                       answer_texts=tuple(batch.answer_texts))

    def summarize(self, ntl: NTLStep, digit_logits: Any, gen: GenerationOutput, texts: list[str],
                  step: int) -> tuple[NTLStep, dict[str, float]]:
        """``NTLInfo`` of the step from the digit slice of the log-prob pass (or of the sampler), and ``ntl/*``
        metrics; updates the running mean number error and picks the step's tau."""
        cfg, tracker = self.cfg, self.tracker
        metrics = {f"ntl/{k}": float(v) for k, v in tracker.counters.items()} if cfg.enabled else {}
        if ntl.weight == 0.0 and not np.any(np.asarray(ntl.targets.weights) > 0):
            return ntl, metrics
        if cfg.extract_during_generation and gen.digit_logits is not None:
            digit_logits = gen.digit_logits
        elif not cfg.extract_during_log_prob:
            return ntl, metrics
        info = compute_ntl_info(digit_logits, ntl.targets, cfg.method,
                                sequence_strings=texts if cfg.debug_mode else None,
                                answer_texts=ntl.answer_texts).to_host(to_host)
        has_answer = np.asarray(info.has_answer)
        if has_answer.any():
            tracker.running_error = update_running_mean(tracker.running_error,
                                                        float(np.mean(np.asarray(info.number_error)[has_answer])))
        tau = float(cfg.tau_at(step, tracker.running_error))
        metrics.update(info.to_metrics())
        metrics["ntl/tau"] = metrics["ntl/temperature"] = tau  # ntl/temperature: the NTL guide's name
        if cfg.debug_mode:
            _log_debug(info, step)
        if cfg.save_digit_info:
            _save_digit_info(info, texts, step, self.output_dir)
        return dataclasses.replace(ntl, info=info, tau=tau), metrics

    def credit(self, ntl: NTLStep, response_ids: np.ndarray, group_size: int) -> tuple[np.ndarray | None,
                                                                                        dict[str, float]]:
        """``digit_credit x`` the digit credit [B, T] to add to the advantages (rows ``i * group_size + j`` are
        prompt i's responses), and ``ntl/digit_credit/*`` metrics; ``None`` when off or nothing is targeted."""
        targets = ntl.targets
        targeted = np.asarray(targets.weights) > 0
        if self.cfg.digit_credit == 0 or not targeted.any():
            return None, {}
        response_ids = np.asarray(response_ids)
        credit, correct = digit_credit(response_ids, np.asarray(targets.target_digits), np.asarray(targets.weights),
                                       np.asarray(targets.layout.number_ids), np.asarray(targets.layout.places),
                                       np.arange(response_ids.shape[0]) // group_size, self.digit_ids)
        credit *= np.float32(self.cfg.digit_credit)
        return credit, {"ntl/digit_credit/targeted_digit_acc": float(correct[targeted].mean()),
                        "ntl/digit_credit/abs_mean": float(np.abs(credit[targeted]).mean())}

    def reward_kwargs(self, ntl: NTLStep, index: int) -> dict[str, Any]:
        """``ntl_info`` (sample ``index``'s view) and ``tau`` for ``compute_score``; nothing without NTL."""
        if ntl.info is None or not self.cfg.pass_to_reward_function:
            return {}
        return {"ntl_info": ntl.info.sample_view(index), "tau": ntl.tau}


def _log_debug(info: NTLInfo, step: int) -> None:
    for i in range(min(info.batch_size, 4)):
        view = info.sample_view(i)
        log.info("[ntl debug] step=%d sample=%d text=%r positions=%s targets=%s predictions=%s missing=%d "
                 "sign_wrong=%s ntl=%.4f answer_error=%.4f acc=%.3f", step, i,
                 info.sequence_strings[i] if info.sequence_strings else None, view["digit_positions"],
                 view["digit_ground_truth"], view["digit_predictions"], view["missing_digits"],
                 view["sign_wrong"], view["ntl_loss"], view["answer_error"], view["digit_accuracy"])


def _save_digit_info(info: NTLInfo, texts: list[str], step: int, output_dir: str) -> None:
    with open(os.path.join(output_dir, "digit_info.jsonl"), "a") as f:
        for i in range(info.batch_size):
            f.write(json.dumps({"step": step, "sample": i, "text": texts[i], **info.sample_view(i)}) + "\n")
