"""Schedules of tau, the temperature of the NTL reward's closeness bonus ``exp(-e / tau)``.

With ``s = clip(step, 0, steps)`` and ``f = s / steps``:

    constant     tau(s) = start
    linear       tau(s) = start + (end - start) * f
    cosine       tau(s) = end + (start - end) * (1 + cos(pi * f)) / 2
    exponential  tau(s) = start * (end / start) ** f          (start, end > 0)

A schedule is a small frozen, picklable callable (it travels to reward workers). Strings: ``'2.0'``,
``'constant:2.0'``, ``'linear:2.0->0.5@1000'``, ``'cosine:2.0->0.5@1000'``, ``'exponential:2.0->0.5@1000'``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any


KINDS = ("constant", "linear", "cosine", "exponential")
ACCEPTED_FORMS = (
    "a float, 'constant:T', 'linear:START->END@STEPS', 'cosine:START->END@STEPS' "
    "or 'exponential:START->END@STEPS' (STEPS an integer >= 1)"
)

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_CONSTANT_RE = re.compile(rf"^\s*(?:constant\s*:\s*)?({_NUMBER})\s*$")
_RAMP_RE = re.compile(rf"^\s*(linear|cosine|exponential)\s*:\s*({_NUMBER})\s*->\s*({_NUMBER})\s*@\s*(\d+)\s*$")


def _require_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"schedule {name}={value!r} is invalid; allowed: a finite number")
    return float(value)


def _require_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"schedule steps={steps!r} is invalid; allowed: an integer >= 1")
    return steps


@dataclasses.dataclass(frozen=True)
class Schedule:
    """``tau(step)`` for one of ``KINDS`` (formulas in the module docstring); ``steps`` is 0 for constant."""

    kind: str
    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        fraction = min(max(float(step), 0.0), float(self.steps)) / self.steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * fraction
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * fraction))
        return self.start * (self.end / self.start) ** fraction

    @property
    def spec(self) -> str:
        """The string form, which ``parse_schedule`` turns back into an equal schedule."""
        if self.kind == "constant":
            return f"constant:{self.start!r}"
        return f"{self.kind}:{self.start!r}->{self.end!r}@{self.steps}"

    def bounds(self) -> tuple[float, float]:
        """``(min, max)`` of tau over all steps (every kind is monotone, so the endpoints)."""
        return min(self.start, self.end), max(self.start, self.end)


def constant(tau: float) -> Schedule:
    """``tau(s) = tau``."""
    value = _require_finite("tau", tau)
    return Schedule("constant", value, value, 0)


def linear(start: float, end: float, steps: int) -> Schedule:
    """``tau(s) = start + (end - start) * clip(s, 0, steps) / steps``."""
    return Schedule("linear", _require_finite("start", start), _require_finite("end", end), _require_steps(steps))


def cosine(start: float, end: float, steps: int) -> Schedule:
    """``tau(s) = end + (start - end) * (1 + cos(pi * clip(s, 0, steps) / steps)) / 2``."""
    return Schedule("cosine", _require_finite("start", start), _require_finite("end", end), _require_steps(steps))


def exponential(start: float, end: float, steps: int) -> Schedule:
    """``tau(s) = start * (end / start) ** (clip(s, 0, steps) / steps)``; needs ``start, end > 0``."""
    start_value, end_value = _require_finite("start", start), _require_finite("end", end)
    if start_value <= 0 or end_value <= 0:
        raise ValueError(f"exponential schedule start={start!r}, end={end!r} is invalid; allowed: both > 0")
    return Schedule("exponential", start_value, end_value, _require_steps(steps))


_RAMPS = {"linear": linear, "cosine": cosine, "exponential": exponential}


def parse_schedule(spec: str | float | Schedule) -> Schedule:
    """Schedule from a float or a string such as ``'linear:2.0->0.5@1000'`` (forms in the module docstring)."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return constant(spec)
    if isinstance(spec, str):
        constant_match = _CONSTANT_RE.match(spec)
        ramp_match = _RAMP_RE.match(spec)
        try:
            if constant_match:
                return constant(float(constant_match.group(1)))
            if ramp_match:
                kind, start, end, steps = ramp_match.groups()
                return _RAMPS[kind](float(start), float(end), int(steps))
        except ValueError as err:
            raise ValueError(f"tau schedule {spec!r} is invalid ({err}); accepted: {ACCEPTED_FORMS}") from None
    raise ValueError(f"tau schedule {spec!r} is invalid; accepted: {ACCEPTED_FORMS}")


def adaptive_tau(
    base_tau: float,
    mean_ntl_loss: float,
    *,
    reference_loss: float = 1.0,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
) -> float:
    """Adaptive temperature: ``tau = base_tau * clip(mean_ntl_loss / reference_loss, min_scale, max_scale)``.

    ``mean_ntl_loss`` is the trainer's running mean of the batch NTL. Scaling tau with it keeps the reward
    ``exp(-ntl / tau)`` sensitive as the policy improves: a response at the running mean always scores
    ``exp(-reference_loss / base_tau)``, and beating the mean is rewarded at every stage of training.
    A non-finite mean (no digits seen yet) leaves ``base_tau`` unchanged.
    """
    base = _require_finite("base_tau", base_tau)
    if base <= 0 or reference_loss <= 0 or not 0 < min_scale <= max_scale:
        raise ValueError(
            f"adaptive_tau(base_tau={base_tau!r}, reference_loss={reference_loss!r}, min_scale={min_scale!r}, "
            f"max_scale={max_scale!r}) is invalid; allowed: base_tau, reference_loss > 0 and 0 < min_scale <= max_scale"
        )
    mean = float(mean_ntl_loss)
    if not math.isfinite(mean):
        return base
    return base * min(max(mean / reference_loss, min_scale), max_scale)


def update_running_mean(running_mean: float | None, value: float, decay: float = 0.9) -> float:
    """EMA for ``adaptive_tau``: ``decay * running_mean + (1 - decay) * value`` (``value`` when none yet)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"running-mean decay={decay!r} is invalid; allowed: 0 <= decay < 1")
    value = float(value)
    if not math.isfinite(value):
        return running_mean if running_mean is not None else value
    if running_mean is None or not math.isfinite(running_mean):
        return value
    return decay * running_mean + (1.0 - decay) * value
