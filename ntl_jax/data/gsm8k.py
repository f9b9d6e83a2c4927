"""GSM8K -> verl-format rows, exactly as verl's ``examples/data_preprocess/gsm8k.py`` writes them.

Row: ``data_source='openai/gsm8k'``, ``prompt=[{'role': 'user', 'content': question + ' ' + INSTRUCTION}]``,
``ability='math'``, ``reward_model={'style': 'rule', 'ground_truth': <text after '####', commas removed, stripped>}``,
``extra_info={'split', 'index', 'answer', 'question'}`` (raw answer and question).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ntl_jax.data.verl_parquet import write_verl_parquet

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
SPLITS = ("train", "test")


def extract_gsm8k_answer(answer: str) -> str:
    """Final answer of a GSM8K solution: the text after the last '####', commas removed, stripped."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' final-answer line: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].replace(",", "").strip()


def convert_gsm8k_row(row: dict, split: str, index: int) -> dict:
    """One raw GSM8K record ``{'question', 'answer'}`` -> one verl row."""
    if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise ValueError(f"{split} record {index}: needs string 'question' and 'answer', got keys {sorted(row)}")
    question, answer = row["question"], row["answer"]
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": extract_gsm8k_answer(answer)},
        "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
    }


def convert_gsm8k_split(records: Iterable[dict], split: str) -> list[dict]:
    """All records of one split, indexed in order."""
    return [convert_gsm8k_row(record, split, index) for index, record in enumerate(records)]


def read_gsm8k_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a raw GSM8K JSONL file (blank lines skipped); ValueError naming the file and line when broken."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(path)}:{line_number}: not valid JSON ({err.msg})") from None
    return records


def load_gsm8k_records_from_dir(input_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """``{'train': [...], 'test': [...]}`` from ``input_dir/train.jsonl`` and ``input_dir/test.jsonl``."""
    records = {}
    for split in SPLITS:
        path = os.path.join(input_dir, f"{split}.jsonl")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing; --input_dir needs train.jsonl and test.jsonl")
        records[split] = read_gsm8k_jsonl(path)
    return records


def load_gsm8k_records_from_hf(dataset_name: str = DATA_SOURCE, config: str = "main") -> dict[str, list[dict]]:
    """``{'train', 'test'}`` records via the optional ``datasets`` package (needs network or an HF cache)."""
    try:
        import datasets  # noqa: PLC0415  (optional dependency, only for this path)
    except ImportError:
        raise RuntimeError("the 'datasets' package is not installed: `pip install 'ntl_jax[gsm8k]'`, or pass --input_dir "
                           "with train.jsonl/test.jsonl") from None
    try:
        loaded = datasets.load_dataset(dataset_name, config)
    except Exception as err:  # network, hub and cache failures all end the same way for the user
        raise RuntimeError(f"could not load {dataset_name!r} ({config}) with datasets: {err}; offline? "
                           "use --input_dir") from err
    return {split: [dict(record) for record in loaded[split]] for split in SPLITS}


def write_gsm8k_parquet(records: dict[str, list[dict]], output_dir: str | os.PathLike) -> dict[str, str]:
    """Convert and write ``output_dir/{train,test}.parquet``; returns the paths by split."""
    paths = {}
    for split in SPLITS:
        paths[split] = os.path.join(output_dir, f"{split}.parquet")
        write_verl_parquet(convert_gsm8k_split(records[split], split), paths[split])
    return paths
