"""The one place configuration fields are declared and checked (MaxText style: help text beside each knob).

Every configuration dataclass declares its fields with :func:`knob`, which keeps the help text in the field's
metadata (``scripts/gen_config_docs.py`` writes configs/README.md from it), and checks them in ``__post_init__``
with the ``check_*`` functions below, whose errors are one line naming the class, the key, the value and what is
allowed. Choice lists are not written here: each comes from the registry that implements the choices
(``ADVANTAGE_ESTIMATORS``, ``LOSS_AGG_MODES``, ``KL_ESTIMATORS``, NTL ``METHODS``, ...).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable


def knob(default: Any, help: str, *, factory: Any = None) -> Any:  # noqa: A002 - the metadata key users read
    """A dataclass field with ``help`` in its metadata (``factory`` for a mutable default)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def fail(cls: str, key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls}.{key}={value!r} is invalid; allowed: {allowed}")


def check_choice(cls: str, key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(cls, key, value, ", ".join(repr(c) for c in choices))


def check_bool(cls: str, key: str, value: Any) -> None:
    if not isinstance(value, bool):
        fail(cls, key, value, "True, False")


def check_range(cls: str, key: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        lo_txt = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        hi_txt = "" if hi is None else f"<= {hi:g}"
        fail(cls, key, value, " ".join(["a finite number", " and ".join(t for t in (lo_txt, hi_txt) if t)]).strip())


def check_positive_int(cls: str, key: str, value: Any, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        fail(cls, key, value, "an integer >= " + ("0" if allow_zero else "1"))
