"""PPO + Number Token Loss: the NTL hooks of the shared PPO loop.

What NTL mode adds to :class:`~ntl_jax.ppo.trainer.PPOTrainer`:

- targets: per-token target digits for the configured ``reward_mode`` (host-side, from response tokens and
  ground truth; :func:`ntl_jax.ntl.targets.build_batch_targets`);
- the NTL pass: the old-log-prob forward also returns ``digit_logits = logits[..., digit_ids]``; with the
  targets it becomes :class:`~ntl_jax.ntl.info.NTLInfo` *before* rewards are computed;
- rewards receive ``ntl_info`` (that sample's view) and ``tau`` (the scheduled temperature);
- the actor loss adds ``weight * NTL`` from its own forward's digit slice (see ``steps.actor_loss``);
- metrics ``ntl/*``, debug logging, per-step digit records (``save_digit_info``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from ntl_jax.models.sampler import GenerationOutput
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ntl.info import DigitTargets, NTLInfo, compute_ntl_info
from ntl_jax.ntl.schedules import update_running_mean
from ntl_jax.ntl.targets import build_batch_targets
from ntl_jax.ppo.trainer import PPOTrainer

log = logging.getLogger(__name__)


class NTLError(RuntimeError):
    """NTL could not be computed for a batch and ``fallback_on_error`` is off."""


class NTLPPOTrainer(PPOTrainer):
    """PPO whose rewards see NTL and whose actor loss includes it."""

    use_ntl = True

    def __init__(self, *args: Any, **kwargs: Any):
        self._ntl_info: NTLInfo | None = None
        self._ntl_active = True  # False for a step that fell back to standard PPO
        self._tau = 0.0
        self._running_error: float | None = None
        self.ntl_counters = {"extraction_failures": 0, "batches_without_digits": 0, "bad_ground_truths": 0}
        super().__init__(*args, **kwargs)
        if not self.config.ntl.enabled:
            raise ValueError("NTLPPOTrainer needs NTLConfig.enabled=True (or use_ntl_trainer=True)")

    @property
    def ntl(self):
        return self.config.ntl

    def reward_fn_name(self) -> str:
        """By default the NTL-aware reward: switching NTL on makes the rewards see it (``custom_ntl_reward``)."""
        if self.run.reward_fn_name is None and self.run.reward_fn_path is None:
            return "custom_ntl_reward"
        return super().reward_fn_name()

    def setup_digits(self) -> Any:
        ids = digit_token_ids(self.tokenizer, logits_dim=self.models.model_config.vocab_size,
                              cache=self.ntl.cache_digit_mappings)
        return jnp.asarray(ids, jnp.int32)

    def _fallback(self, reason: str, gen: GenerationOutput) -> DigitTargets:
        self.ntl_counters["extraction_failures"] += 1
        if not self.ntl.fallback_on_error:
            raise NTLError(f"NTL failed at step {self.global_step}: {reason} (set NTLConfig.fallback_on_error=True "
                           "to continue with standard PPO for such steps)")
        log.warning("NTL failed at step %d (%s); running this step as standard PPO (fallback_on_error)",
                    self.global_step, reason)
        self._ntl_active = False
        return super().prepare_ntl(gen, [])

    def prepare_ntl(self, gen: GenerationOutput, rows: list[dict]) -> DigitTargets:
        self._ntl_active, self._ntl_info = True, None
        ground_truths = [str(row["reward_model"]["ground_truth"]) for row in rows]
        try:
            batch = build_batch_targets(gen.response_ids, gen.response_mask, ground_truths, self.tokenizer,
                                        np.asarray(self.digit_ids), self.ntl.reward_mode,
                                        answer_extraction=self.ntl.answer_extraction,
                                        hybrid_weight=self.ntl.hybrid_weight)
        except Exception as err:  # noqa: BLE001 - any extraction failure is handled by the configured policy
            return self._fallback(f"{type(err).__name__}: {err}", gen)
        self.ntl_counters["bad_ground_truths"] += int(batch.bad_ground_truth.sum())
        if not np.any(batch.weights > 0):
            if self.ntl.require_digits:
                return self._fallback("no response in the batch has a digit target (require_digits=True)", gen)
            self.ntl_counters["batches_without_digits"] += 1
            log.info("step %d: no digit targets in the batch; rewards are standard for this step", self.global_step)
        answer_weight = self.ntl.hybrid_weight if self.ntl.reward_mode == "hybrid" else 1.0
        return DigitTargets.from_batch(batch, answer_weight)

    def ntl_after_logprobs(self, gen: GenerationOutput, digit_logits: Any, targets: DigitTargets,
                           texts: list[str]) -> dict[str, float]:
        metrics = {f"ntl/{k}": float(v) for k, v in self.ntl_counters.items()}
        if not self._ntl_active:
            return metrics
        source = digit_logits
        if self.ntl.extract_during_generation and gen.digit_logits is not None:
            source = jnp.asarray(gen.digit_logits)
        elif not self.ntl.extract_during_log_prob:
            return metrics
        info = compute_ntl_info(source, targets, self.ntl.method,
                                sequence_strings=texts if self.ntl.debug_mode else None).to_host()
        self._ntl_info = info
        has_answer = np.asarray(info.has_answer)
        if has_answer.any():
            self._running_error = update_running_mean(self._running_error,
                                                    float(np.mean(np.asarray(info.number_error)[has_answer])))
        self._tau = float(self.ntl.tau_at(self.global_step, self._running_error))
        metrics.update(info.to_metrics())
        metrics["ntl/temperature"] = self._tau
        if self.ntl.debug_mode:
            self._log_debug(info)
        if self.ntl.save_digit_info:
            self._save_digit_info(info, texts)
        return metrics

    def _log_debug(self, info: NTLInfo) -> None:
        for i in range(min(info.batch_size, 4)):
            view = info.sample_view(i)
            log.info("[ntl debug] step=%d sample=%d text=%r positions=%s targets=%s predictions=%s missing=%d "
                     "sign_wrong=%s ntl=%.4f answer_error=%.4f acc=%.3f", self.global_step, i,
                     info.sequence_strings[i] if info.sequence_strings else None, view["digit_positions"],
                     view["digit_ground_truth"], view["digit_predictions"], view["missing_digits"],
                     view["sign_wrong"], view["ntl_loss"], view["answer_error"], view["digit_accuracy"])

    def _save_digit_info(self, info: NTLInfo, texts: list[str]) -> None:
        path = os.path.join(self.output_dir, "digit_info.jsonl")
        with open(path, "a") as f:
            for i in range(info.batch_size):
                record = {"step": self.global_step, "sample": i, "text": texts[i], **info.sample_view(i)}
                f.write(json.dumps(record) + "\n")

    def reward_kwargs(self, index: int) -> dict[str, Any]:
        if not (self._ntl_active and self._ntl_info is not None and self.ntl.pass_to_reward_function):
            return {}
        return {"ntl_info": self._ntl_info.sample_view(index), "tau": self._tau}

    def ntl_weight(self) -> float:
        return float(self.ntl.weight) if self._ntl_active else 0.0

    def extra_meta(self) -> dict[str, Any]:
        running = self._running_error if self._running_error is not None and math.isfinite(self._running_error) else None
        return {"ntl_counters": dict(self.ntl_counters), "ntl_running_number_error": running}

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.ntl_counters.update(meta.get("ntl_counters", {}))
        self._running_error = meta.get("ntl_running_number_error")
