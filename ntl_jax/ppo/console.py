"""What a run prints while it trains: a bar on a terminal, plain lines elsewhere (nohup, batch schedulers).

- every validation, as it happens, one line: ``validation at step 25: arithmetic acc 0.4520, answer MAE 190.31``;
- every ``every`` iterations (and the last), one compact line: ``step 10/150 | score 0.452 | acc 0.391 | ...``;
- on a terminal a tqdm bar with the same count, which the lines above are written through (``tqdm.write``).
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

#: (label, metric key, format) of the compact line, in order; a metric the step did not log is left out.
COMPACT = (("score", "critic/score/mean", ".3f"), ("acc", "reward_extra/acc/mean", ".3f"),
           ("pg_loss", "actor/pg_loss", ".4f"), ("kl", "actor/kl_loss", ".4f"), ("entropy", "actor/entropy", ".3f"),
           ("ntl", "ntl/loss", ".3f"), ("ntl_reward", "ntl/reward", ".3f"), ("s/it", "timing_s/step", ".2f"))


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def compact_line(step: int, total: int, metrics: dict[str, Any]) -> str:
    parts = [f"step {step}/{total}"]
    parts += [f"{label} {metrics[key]:{spec}}" for label, key, spec in COMPACT if key in metrics]
    return " | ".join(parts)


def validation_line(step: int, metrics: dict[str, Any]) -> str | None:
    """``validation at step S: <source> acc A, answer MAE M; ...`` from verl's val-core / val-aux keys."""
    # A data source may hold a '/' ('openai/gsm8k'): it is what lies between the group and the metric name.
    accs = {key[len("val-core/"):key.rindex("/acc/")]: value for key, value in metrics.items()
            if key.startswith("val-core/") and "/acc/" in key}
    if not accs:
        return None
    parts = []
    for source, acc in sorted(accs.items()):
        text = f"{source} acc {acc:.4f}"
        mae = [v for k, v in metrics.items() if k.startswith(f"val-aux/{source}/abs_error/mean@")]
        if mae:
            text += f", answer MAE {mae[0]:.2f}"
        parts.append(text)
    return f"validation at step {step}: " + "; ".join(parts)


class Console:
    """The run's console output (module docstring); ``enabled=False`` prints nothing."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, every: int = 10, desc: str = "ppo",
                 stream: TextIO | None = None):
        self.total, self.enabled, self.every = total, enabled, every
        self.stream = stream if stream is not None else sys.stdout
        self.bar = (tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
                    if enabled and is_terminal(self.stream) and is_terminal(sys.stderr) else None)

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def validation(self, step: int, metrics: dict[str, Any]) -> None:
        line = validation_line(step, metrics)
        if line is not None:
            self.write(line)

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(score=f"{metrics.get('critic/score/mean', 0.0):.3f}")
        if self.every and (step % self.every == 0 or step == self.total):
            self.write(compact_line(step, self.total, metrics))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
