"""Gin-configurable ``NTLConfig``: the keys users of the verl NTL guide know, validated on construction.

In a gin file: ``NTLConfig.enabled = True`` (the configs bind it through the macro ``use_ntl_trainer``),
``NTLConfig.method = 'wasserstein'``. A bad value raises one line naming the key, the value and what is allowed.
``tau`` is the NTL reward's temperature; the rollout's sampling temperature is ``PPOConfig.temperature``.
"""

from __future__ import annotations

import dataclasses

import gin

from ntl_jax.knobs import check_bool, check_choice, check_range, fail, knob
from ntl_jax.ntl import schedules
from ntl_jax.ntl.losses import METHODS
from ntl_jax.answers import ANSWER_EXTRACTIONS
from ntl_jax.ntl.targets import REWARD_MODES

_NAME = "NTLConfig"


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class NTLConfig:
    """Number Token Loss settings (docs/NTL.md)."""

    enabled: bool = knob(False, "the switch between standard PPO and PPO + NTL (gin macro use_ntl_trainer)")
    method: str = knob("wasserstein", "per-digit loss: " + ", ".join(METHODS))
    weight: float = knob(0.1, "lambda of actor loss + lambda * NTL, NTL aggregated over response tokens like the "
                              "policy-gradient loss (1 = an NTL of 1 at a digit pulls like a PG loss of 1 at a "
                              "token); 0 keeps NTL as a reward signal only")
    extract_during_generation: bool = knob(False, "take the digit slice from the sampler instead of the log-prob pass")
    extract_during_log_prob: bool = knob(True, "take the digit slice from the log-prob pass that runs before rewards")
    pass_to_reward_function: bool = knob(True, "give compute_score ntl_info and tau")
    reward_mode: str = knob("final_answer", "which digits get targets: " + ", ".join(REWARD_MODES))
    tau: float = knob(0.1, "temperature of the reward's closeness bonus exp(-e / tau), e the written answer's "
                           "relative error: the error at which the bonus falls to 1/e")
    adaptive_tau: bool = knob(False, "tau follows the running mean number error, clipped to [0.1, 10] x the "
                                     "scheduled tau (a response at the mean earns exp(-1))")
    tau_schedule: str | None = knob(None, "a schedule string that overrides tau per step: "
                                          + schedules.ACCEPTED_FORMS)
    hybrid_weight: float = knob(0.5, "hybrid mode: weight of answer digits; checked steps get 1 - this")
    answer_extraction: str = knob("strict_then_last", "how NTL reads the answer of a data source without a built-in "
                                                      "scorer (built-in ones use their scorer's reader): strict "
                                                      "(verl's '#### n'), last (last number), strict_then_last")
    debug_mode: bool = knob(False, "log targets and predictions of a few samples per step")
    save_digit_info: bool = knob(False, "append every sample's digit record to <output_dir>/digit_info.jsonl")
    cache_digit_mappings: bool = knob(True, "cache the digit token ids per tokenizer")
    fallback_on_error: bool = knob(False, "on an NTL failure run the step as standard PPO (warned, counted) "
                                          "instead of stopping")
    require_digits: bool = knob(False, "treat a batch in which no response has a digit target as an NTL failure")
    digit_credit: float = knob(0.0, "token-level credit at targeted digits, added to the advantages: this x (1 for "
                                    "a right digit, 0 for a wrong one, minus the mean of the prompt's responses at "
                                    "the same number and place); 0 = off (ntl_jax/ntl/credit.py)")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.type == "bool":
                check_bool(_NAME, field.name, getattr(self, field.name))
        check_choice(_NAME, "method", self.method, METHODS)
        check_choice(_NAME, "reward_mode", self.reward_mode, REWARD_MODES)
        check_choice(_NAME, "answer_extraction", self.answer_extraction, ANSWER_EXTRACTIONS)
        check_range(_NAME, "weight", self.weight, 0.0)
        check_range(_NAME, "tau", self.tau, 0.0, lo_open=True)
        check_range(_NAME, "hybrid_weight", self.hybrid_weight, 0.0, 1.0)
        check_range(_NAME, "digit_credit", self.digit_credit, 0.0)
        if self.digit_credit > 0 and not self.enabled:
            fail(_NAME, "digit_credit", self.digit_credit, "0 while NTL is off (the credit is given at NTL's digit "
                                                           "targets; set use_ntl_trainer = True)")
        if self.tau_schedule is not None:
            self._check_schedule()
        if self.enabled and not (self.extract_during_generation or self.extract_during_log_prob):
            # Without a digit slice there is no NTLInfo: rewards would silently get no ntl_info and no tau.
            fail(_NAME, "(extract_during_generation, extract_during_log_prob)", (False, False),
                 "at least one True while NTL is enabled (pass_to_reward_function=False keeps NTL out of rewards)")

    def _check_schedule(self) -> None:
        spec = self.tau_schedule
        if not isinstance(spec, str):
            fail(_NAME, "tau_schedule", spec, f"None or a string: {schedules.ACCEPTED_FORMS}")
        try:
            lowest, _ = schedules.parse_schedule(spec).bounds()
        except ValueError:
            fail(_NAME, "tau_schedule", spec, schedules.ACCEPTED_FORMS)
        if lowest <= 0:
            fail(_NAME, "tau_schedule", spec, "a schedule whose values stay > 0")

    def schedule(self) -> schedules.Schedule:
        """The tau schedule: ``tau_schedule`` parsed, else constant ``tau``."""
        if self.tau_schedule is None:
            return schedules.constant(self.tau)
        return schedules.parse_schedule(self.tau_schedule)

    def tau_at(self, step: int, mean_number_error: float | None = None) -> float:
        """tau at ``step``; with ``adaptive_tau`` and a running ``mean_number_error``, that mean (clipped)."""
        tau = self.schedule()(step)
        if self.adaptive_tau and mean_number_error is not None:
            tau = schedules.adaptive_tau(tau, mean_number_error, reference_loss=tau)
        return tau
