"""Training metrics: JSON lines + TensorBoard (+ optional Weights & Biases), written by the main process only.

`<output_dir>/metrics.jsonl` gets one line per `log` call, `{"step": int, "<name>": value, ...}`, flushed at once so a
crash loses at most the line being written. Values are python floats; non-finite ones are written as the strings
"nan", "inf", "-inf" (JSON has no NaN) and `read_metrics_jsonl` turns them back into floats.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_scalar(name: str, value: Any) -> float:
    """A metric value (python/numpy/jax number or size-1 array) as a python float; anything else -> ValueError."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"metric {name!r} has value {value!r}; metrics must be numbers or size-1 arrays")
    if isinstance(value, numbers.Number):
        return float(value)
    array = np.asarray(value)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"metric {name!r} has shape {array.shape} dtype {array.dtype}; metrics must be scalars")
    return float(array.reshape(()))


def _json_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _from_json_value(value: Any) -> Any:
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def reduce_metrics(metrics_list: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each key over the dicts that have it: out[k] = sum_i m_i[k] / #{i : k in m_i}."""
    values: dict[str, list[float]] = {}
    for metrics in metrics_list:
        for name, value in jax.device_get(dict(metrics)).items():
            values.setdefault(name, []).append(to_scalar(name, value))
    return {name: float(np.mean(vals)) for name, vals in values.items()}


def format_metrics(metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """One console line 'name=value | ...' (4 significant digits) for `keys` (default: all, in insertion order)."""
    names = list(metrics) if keys is None else [k for k in keys if k in metrics]
    parts = []
    for name in names:
        value = to_scalar(name, jax.device_get(metrics[name]))
        parts.append(f"{name}={int(value)}" if value.is_integer() and abs(value) < 1e15 else f"{name}={value:.4g}")
    return " | ".join(parts)


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, non-finite strings turned back into floats.

    A truncated last line (the process died mid-write) is skipped with a warning; a bad line elsewhere is an error.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("%s: ignoring truncated last line %d", path, number)
                continue
            raise ValueError(f"{path}: line {number} is not valid JSON: {line[:80]!r}") from None
        records.append({k: _from_json_value(v) for k, v in record.items()})
    return records


def read_tensorboard_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file under `logdir`: {tag: [(step, value), ...]} in file order (CRC-checked records)."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = event_file.read_bytes()
        offset = 0
        # TFRecord framing: uint64 length, uint32 masked crc(length), payload, uint32 masked crc(payload).
        while offset + 12 <= len(data):
            header = data[offset:offset + 8]
            (length,) = struct.unpack("<Q", header)
            end = offset + 16 + length
            if end > len(data) or struct.unpack("<I", data[offset + 8:offset + 12])[0] != masked_crc32c(header):
                break  # torn write at the end of the file
            payload = data[offset + 12:end - 4]
            if struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(payload):
                break
            offset = end
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars


def tensorboard_tag(name: str) -> str:
    """verl's ``val-core/<source>/acc/mean@1`` as a legal TensorBoard tag (``mean_at_1``); jsonl keeps the name."""
    return name.replace("@", "_at_")


class MetricsLogger:
    """Writes each `log(step, metrics)` to metrics.jsonl, TensorBoard and (optionally) W&B; no-op off the main process."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        use_tensorboard: bool = True,
        is_main_process: bool = True,
        use_wandb: bool = False,
        wandb_project: str | None = None,
        run_name: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.is_main_process = is_main_process
        self.jsonl_path = self.output_dir / METRICS_FILENAME
        self._jsonl = None
        self._tensorboard = None
        self._wandb_run = None
        if not is_main_process:
            return
        if use_wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("use_wandb=True needs the wandb package (pip install wandb); "
                                  "or set use_wandb=False") from None
            self._wandb_run = wandb.init(project=wandb_project, name=run_name, dir=str(self.output_dir))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file.
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if use_tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(logdir=str(self.output_dir / TENSORBOARD_SUBDIR))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` (name -> scalar) at `step`; values are checked on every process so errors show everywhere."""
        if isinstance(step, bool) or not isinstance(step, (numbers.Integral, np.integer)) or step < 0:
            raise ValueError(f"step={step!r} must be a non-negative integer")
        if "step" in metrics:
            raise ValueError("metric name 'step' is reserved for the step number; rename the metric")
        values = {name: to_scalar(name, value) for name, value in jax.device_get(dict(metrics)).items()}
        if not self.is_main_process:
            return
        if self._jsonl is None:
            raise ValueError(f"MetricsLogger for {self.output_dir} is closed; create a new one to log step {step}")
        record = {"step": int(step), **{name: _json_value(v) for name, v in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(tensorboard_tag(name), value, global_step=int(step))
            self._tensorboard.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=int(step))

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
