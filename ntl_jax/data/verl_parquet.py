"""verl-format prompt data: parquet I/O, prompt rendering, and a resumable, epoch-shuffled prompt loader.

A verl row has ``data_source: str``, ``prompt: list[{'role','content'}]``, ``reward_model: {'ground_truth', ...}``
and usually ``ability`` and ``extra_info``; other columns are kept as they are.

Loader order: epoch ``e`` visits the prompts in ``np.random.default_rng(seed + e).permutation(num_prompts)`` (or in
file order without shuffling), ``batch_size`` at a time. State is ``{'epoch', 'position'}`` with ``position`` the
number of batches of epoch ``epoch`` already handed out; ``position == steps_per_epoch`` means that epoch is finished
and the next batch starts epoch ``epoch + 1`` (resuming there runs the next epoch, not zero steps).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")
TRUNCATION_MODES = ("error", "left", "right")


def _row_problem(row: Any) -> str | None:
    """What is wrong with one verl row, or None when it is well-formed."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, expected a dict"
    if not isinstance(row.get("data_source"), str) or not row["data_source"]:
        return f"data_source={row.get('data_source')!r} must be a non-empty string"
    messages = row.get("prompt")
    if not isinstance(messages, (list, tuple)) or not messages:
        return f"prompt={messages!r} must be a non-empty list of {{'role', 'content'}} messages"
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            return f"prompt[{j}]={message!r} must be a dict with string 'role' and 'content'"
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        return f"reward_model={reward_model!r} must be a dict with a 'ground_truth'"
    return None


def validate_verl_rows(rows: Sequence[Any], source: str) -> None:
    """Raise ValueError '<source>: row <i>: <problem>' for the first malformed row."""
    for index, row in enumerate(rows):
        problem = _row_problem(row)
        if problem is not None:
            raise ValueError(f"{source}: row {index}: {problem}")


def load_verl_parquet(path: str | os.PathLike) -> list[dict]:
    """Rows of a verl-format parquet file as plain dicts, validated (ValueError naming the file and row/column)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such parquet file")
    table = pq.read_table(path)
    for column in REQUIRED_COLUMNS:
        if column not in table.column_names:
            raise ValueError(f"{path}: missing required column {column!r}; columns are {table.column_names}")
    rows = table.to_pylist()
    validate_verl_rows(rows, path)
    return rows


def write_verl_parquet(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Validate ``rows`` and write them as one parquet file (parent folders created)."""
    path = os.fspath(path)
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    validate_verl_rows(rows, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def render_prompt(row: dict, tokenizer: Any) -> str:
    """Prompt text: the tokenizer's chat template with the generation prompt when it has one, else the message
    contents joined by newlines."""
    messages = list(row["prompt"])
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(message["content"] for message in messages)


def _fit_length(token_ids: list[int], index: int, max_prompt_length: int, truncation: str) -> list[int]:
    if len(token_ids) <= max_prompt_length:
        return token_ids
    if truncation == "left":
        return token_ids[len(token_ids) - max_prompt_length:]
    if truncation == "right":
        return token_ids[:max_prompt_length]
    raise ValueError(f"prompt of row {index} has {len(token_ids)} tokens > max_prompt_length={max_prompt_length}; "
                     "set truncation='left'|'right' or filter_overlong_prompts=True")


class PromptDataset:
    """Rendered and tokenised prompts of verl rows, overlong ones filtered or truncated.

    ``dataset[i] -> (prompt_token_ids, row, row_index)`` where ``row_index`` is the position in the original ``rows``.
    Tokenised without special tokens (as verl does): a chat template brings its own.
    """

    def __init__(self, rows: Sequence[dict], tokenizer: Any, *, max_prompt_length: int = 512,
                 truncation: str = "error", filter_overlong_prompts: bool = True, source: str = "rows"):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation={truncation!r} is not one of {TRUNCATION_MODES}")
        if max_prompt_length < 1:
            raise ValueError(f"max_prompt_length={max_prompt_length} must be >= 1")
        validate_verl_rows(rows, source)
        texts = [render_prompt(row, tokenizer) for row in rows]
        all_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        self.rows: list[dict] = []
        self.token_ids: list[list[int]] = []
        self.row_indices: list[int] = []
        num_filtered = 0
        for index, (row, ids) in enumerate(zip(rows, all_ids)):
            if filter_overlong_prompts and len(ids) > max_prompt_length:
                num_filtered += 1
                continue
            self.rows.append(row)
            self.token_ids.append(_fit_length(list(ids), index, max_prompt_length, truncation))
            self.row_indices.append(index)
        if num_filtered:
            logger.warning("%s: filtered %d of %d prompts longer than max_prompt_length=%d tokens",
                           source, num_filtered, len(rows), max_prompt_length)
        if not self.rows:
            raise ValueError(f"{source}: no prompts left ({len(rows)} rows, {num_filtered} filtered as longer than "
                             f"max_prompt_length={max_prompt_length})")
        self.num_filtered = num_filtered

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[int], dict, int]:
        return self.token_ids[i], self.rows[i], self.row_indices[i]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """One batch of prompts; ``indices`` are positions in the loader's original ``rows``."""
    prompt_token_ids: list[list[int]]
    rows: list[dict]
    indices: list[int]


class PromptLoader:
    """Epoch-shuffled batches of a :class:`PromptDataset`, resumable with ``state_dict`` / ``load_state_dict``.

    ``for batch in loader`` yields the rest of the current epoch; ``next_batch()`` rolls over epochs forever.
    """

    def __init__(self, rows: Sequence[dict], tokenizer: Any, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 max_prompt_length: int = 512, truncation: str = "error", filter_overlong_prompts: bool = True,
                 drop_last: bool = True, source: str = "rows"):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.dataset = PromptDataset(rows, tokenizer, max_prompt_length=max_prompt_length, truncation=truncation,
                                     filter_overlong_prompts=filter_overlong_prompts, source=source)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        num_prompts = len(self.dataset)
        self._steps_per_epoch = num_prompts // batch_size if drop_last else math.ceil(num_prompts / batch_size)
        if self._steps_per_epoch == 0:
            raise ValueError(f"{source}: {num_prompts} prompts make no full batch of batch_size={batch_size} "
                             "with drop_last=True")
        self._epoch = 0
        self._position = 0
        self._order_epoch = -1
        self._order = np.arange(num_prompts)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    @property
    def num_prompts(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return self._steps_per_epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            num_prompts = len(self.dataset)
            self._order = (np.random.default_rng(self.seed + epoch).permutation(num_prompts) if self.shuffle
                           else np.arange(num_prompts))
            self._order_epoch = epoch
        return self._order

    def _batch_at(self, epoch: int, position: int) -> PromptBatch:
        picks = self._epoch_order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        items = [self.dataset[int(i)] for i in picks]
        return PromptBatch(prompt_token_ids=[list(ids) for ids, _, _ in items], rows=[row for _, row, _ in items],
                           indices=[index for _, _, index in items])

    def _roll_finished_epoch(self) -> None:
        if self._position >= self._steps_per_epoch:
            self._epoch += 1
            self._position = 0

    def next_batch(self) -> PromptBatch:
        """The next batch, starting the next epoch when the current one is finished."""
        self._roll_finished_epoch()
        batch = self._batch_at(self._epoch, self._position)
        self._position += 1
        return batch

    def __iter__(self) -> Iterator[PromptBatch]:
        self._roll_finished_epoch()
        while self._position < self._steps_per_epoch:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"loader state epoch={epoch!r} must be an integer >= 0")
        if not isinstance(position, (int, np.integer)) or not 0 <= position <= self._steps_per_epoch:
            raise ValueError(f"loader state position={position!r} must be an integer in "
                             f"[0, steps_per_epoch={self._steps_per_epoch}]")
        self._epoch, self._position = int(epoch), int(position)
