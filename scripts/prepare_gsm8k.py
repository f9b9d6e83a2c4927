#!/usr/bin/env python
"""Write GSM8K as verl-format train.parquet / test.parquet (same rows as verl's examples/data_preprocess/gsm8k.py).

    python scripts/prepare_gsm8k.py --input_dir ../shared/data/gsm8k --output_dir data/gsm8k
    python scripts/prepare_gsm8k.py --hf_dataset openai/gsm8k --output_dir data/gsm8k   # online, needs `datasets`
"""
from __future__ import annotations

import argparse
import sys

from ntl_jax.data.gsm8k import load_gsm8k_records_from_dir, load_gsm8k_records_from_hf, write_gsm8k_parquet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input_dir", help="folder with raw GSM8K train.jsonl and test.jsonl ('question', 'answer')")
    source.add_argument("--hf_dataset", help="Hugging Face dataset name, e.g. openai/gsm8k (needs network + datasets)")
    parser.add_argument("--hf_config", default="main", help="dataset config for --hf_dataset (default: main)")
    parser.add_argument("--output_dir", required=True, help="where train.parquet and test.parquet are written")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.input_dir is not None:
            records = load_gsm8k_records_from_dir(args.input_dir)
        else:
            records = load_gsm8k_records_from_hf(args.hf_dataset, args.hf_config)
        paths = write_gsm8k_parquet(records, args.output_dir)
    except (ValueError, RuntimeError) as err:
        print(f"prepare_gsm8k: error: {err}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"{split}: {len(records[split])} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
