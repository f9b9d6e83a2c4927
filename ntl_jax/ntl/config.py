"""Gin-configurable ``NTLConfig``: the keys users of the verl NTL guide know, validated on construction.

In a gin file: ``NTLConfig.enabled = True``, ``NTLConfig.method = 'wasserstein'`` (or the full selector
``ntl_jax.NTLConfig.method``). A bad value raises one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gin

from ntl_jax.ntl import schedules
from ntl_jax.ntl.losses import METHODS

REWARD_MODES = ("final_answer", "all_tokens", "hybrid")
ANSWER_EXTRACTIONS = ("strict", "last", "strict_then_last")
_BOOL_KEYS = (
    "enabled", "extract_during_generation", "extract_during_log_prob", "pass_to_reward_function",
    "adaptive_temperature", "debug_mode", "save_digit_info", "cache_digit_mappings",
    "fallback_on_error", "require_digits",
)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"NTLConfig.{key}={value!r} is invalid; allowed: {allowed}")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(key, value, ", ".join(repr(c) for c in choices))


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class NTLConfig:
    """Number Token Loss settings.

    enabled: compute NTL at all. method: 'mse' | 'wasserstein' | 'number' (see ``ntl_jax.ntl.losses``).
    weight: lambda of ``actor loss + lambda * NTL``, NTL aggregated over response tokens like the policy-gradient
    loss (``loss_agg_mode``): lambda = 1 gives an NTL of 1 at one digit position the pull of a policy-gradient loss
    of 1 at one token. 0 keeps NTL as a reward signal only.
    extract_during_generation / extract_during_log_prob: where the digit-logit slice is gathered (sampler vs
    the log-prob pass that runs before rewards). pass_to_reward_function: hand ``ntl_info`` and ``tau`` to
    ``compute_score``. reward_mode: which digits get targets ('final_answer' | 'all_tokens' | 'hybrid', the
    latter weighting final-answer targets ``hybrid_weight`` and the rest ``1 - hybrid_weight``).
    temperature: tau of the reward bonus ``exp(-number_error / tau)``, the relative answer error at which the bonus
    falls to 1/e (``ntl_jax.rewards.ntl_rewards``); temperature_schedule: a ``schedules.parse_schedule`` string
    that overrides it per step; adaptive_temperature: tau follows the running mean number error, clipped to
    [0.1, 10] x the scheduled tau, so a response at the running mean always earns ``exp(-1)``. answer_extraction: 'strict' (``#### n``), 'last' (last number) or
    'strict_then_last'. debug_mode / save_digit_info: logging depth. cache_digit_mappings: cache
    the digit token ids per tokenizer. fallback_on_error: on an NTL failure log and continue without NTL
    instead of raising. require_digits: treat a batch in which no response has a digit target as an error.
    """

    enabled: bool = False
    method: str = "wasserstein"
    weight: float = 0.3
    extract_during_generation: bool = False
    extract_during_log_prob: bool = True
    pass_to_reward_function: bool = True
    reward_mode: str = "final_answer"
    temperature: float = 0.1
    adaptive_temperature: bool = False
    temperature_schedule: str | None = None
    hybrid_weight: float = 0.5
    answer_extraction: str = "strict_then_last"
    debug_mode: bool = False
    save_digit_info: bool = False
    cache_digit_mappings: bool = True
    fallback_on_error: bool = False
    require_digits: bool = False

    def __post_init__(self) -> None:
        for key in _BOOL_KEYS:
            if not isinstance(getattr(self, key), bool):
                _fail(key, getattr(self, key), "True, False")
        _check_choice("method", self.method, METHODS)
        _check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        _check_choice("answer_extraction", self.answer_extraction, ANSWER_EXTRACTIONS)
        if not (_is_finite_number(self.weight) and self.weight >= 0):
            _fail("weight", self.weight, "a finite number >= 0")
        if not (_is_finite_number(self.temperature) and self.temperature > 0):
            _fail("temperature", self.temperature, "a finite number > 0")
        if not (_is_finite_number(self.hybrid_weight) and 0 <= self.hybrid_weight <= 1):
            _fail("hybrid_weight", self.hybrid_weight, "a finite number in [0, 1]")
        if self.temperature_schedule is not None:
            self._check_schedule()

    def _check_schedule(self) -> None:
        spec = self.temperature_schedule
        if not isinstance(spec, str):
            _fail("temperature_schedule", spec, f"None or a string: {schedules.ACCEPTED_FORMS}")
        try:
            lowest, _ = schedules.parse_schedule(spec).bounds()
        except ValueError:
            _fail("temperature_schedule", spec, schedules.ACCEPTED_FORMS)
        if lowest <= 0:
            _fail("temperature_schedule", spec, "a schedule whose temperatures stay > 0")

    def schedule(self) -> schedules.Schedule:
        """The tau schedule: ``temperature_schedule`` parsed, else constant ``temperature``."""
        if self.temperature_schedule is None:
            return schedules.constant(self.temperature)
        return schedules.parse_schedule(self.temperature_schedule)

    def tau_at(self, step: int, mean_number_error: float | None = None) -> float:
        """tau at ``step``; with ``adaptive_temperature`` and a running ``mean_number_error``, that mean (clipped)."""
        tau = self.schedule()(step)
        if self.adaptive_temperature and mean_number_error is not None:
            tau = schedules.adaptive_tau(tau, mean_number_error, reference_loss=tau)
        return tau
