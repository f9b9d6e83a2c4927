"""GSM8K -> verl parquet on the first lines of the real GSM8K files, by function and by the script."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntl_jax.data.gsm8k import (
    INSTRUCTION,
    convert_gsm8k_row,
    extract_gsm8k_answer,
    load_gsm8k_records_from_dir,
    write_gsm8k_parquet,
)
from ntl_jax.data.verl_parquet import load_verl_parquet

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"
NUM_LINES = 50

pytestmark = pytest.mark.skipif(not (GSM8K_DIR / "train.jsonl").is_file(), reason=f"no GSM8K copy at {GSM8K_DIR}")


@pytest.fixture(scope="module")
def small_gsm8k_dir(tmp_path_factory):
    """train.jsonl / test.jsonl holding the first NUM_LINES lines of the real files."""
    folder = tmp_path_factory.mktemp("gsm8k_raw")
    for split in ("train", "test"):
        with open(GSM8K_DIR / f"{split}.jsonl", encoding="utf-8") as src:
            (folder / f"{split}.jsonl").write_text("".join(itertools.islice(src, NUM_LINES)), encoding="utf-8")
    return folder


def _check_rows(rows, raw_records, split):
    assert len(rows) == len(raw_records) == NUM_LINES
    for index, (row, raw) in enumerate(zip(rows, raw_records)):
        assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
        assert row["prompt"] == [{"role": "user", "content": raw["question"] + " " + INSTRUCTION}]
        assert row["prompt"][0]["content"].endswith(
            " Let's think step by step and output the final answer after \"####\".")
        final_line = raw["answer"].strip().split("\n")[-1]
        assert final_line.startswith("#### ")
        assert row["reward_model"] == {"style": "rule", "ground_truth": final_line[5:].replace(",", "").strip()}
        assert row["extra_info"] == {"split": split, "index": index, "answer": raw["answer"],
                                     "question": raw["question"]}


def test_conversion_of_real_gsm8k_lines_round_trips_through_parquet(small_gsm8k_dir, tmp_path):
    records = load_gsm8k_records_from_dir(small_gsm8k_dir)
    paths = write_gsm8k_parquet(records, tmp_path / "out")
    for split in ("train", "test"):
        assert paths[split] == os.path.join(tmp_path / "out", f"{split}.parquet")
        _check_rows(load_verl_parquet(paths[split]), records[split], split)
    first = load_verl_parquet(paths["train"])[0]
    assert first["reward_model"]["ground_truth"] == "72"  # Natalia's clips


def test_answer_extraction_strips_commas_and_needs_the_marker():
    assert extract_gsm8k_answer("so 1,234 + 1 = 1,235\n#### 1,235 ") == "1235"
    assert extract_gsm8k_answer("#### -3") == "-3"
    with pytest.raises(ValueError, match="no '####'"):
        extract_gsm8k_answer("the answer is 4")
    with pytest.raises(ValueError, match="record 7"):
        convert_gsm8k_row({"question": "q"}, "train", 7)


def test_script_writes_both_splits(small_gsm8k_dir, tmp_path):
    out = tmp_path / "script_out"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_gsm8k.py"), "--input_dir", str(small_gsm8k_dir),
         "--output_dir", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert f"train: {NUM_LINES} rows" in result.stdout
    raw_test = [json.loads(line) for line in (small_gsm8k_dir / "test.jsonl").read_text().splitlines()]
    _check_rows(load_verl_parquet(out / "test.parquet"), raw_test, "test")
    assert len(load_verl_parquet(out / "train.parquet")) == NUM_LINES


def test_script_reports_a_missing_input_file(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_gsm8k.py"), "--input_dir", str(tmp_path),
         "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "train.jsonl: missing" in result.stderr
