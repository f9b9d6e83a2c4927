#!/usr/bin/env python
"""Decode tokens/s with and without the CPU decode attention's per-group-member contractions, alternating in one
process (`ntl_jax.models.decoder.grouped_attention`).

For each case the rollout benchmark's model (random weights; `tiny`: width 128, 4 layers, G = 2 query heads per KV
head; `mid`: width 512, 8 layers, G = 4; `mid_grouped`: mid with the benchmark's GRPO shape, 8 prompts x 8 samples,
32 new tokens; `micro`: the smoke model) decodes the benchmark's prompts greedily with two samplers: one traced as
shipped (on CPU, one contraction per group member at one query per row) and one traced with
`grouped_attention(..., per_group_member=False)` forced (one contraction per KV head, G rows). The two then alternate,
`--reps` generates each, in one process (so the host's speed drifts for both alike). Prints one JSON line per case:
median tokens/s of each, their ratio, and whether both produced the same tokens.

    python benchmarks/probes/ab_decode_attention.py --cases tiny,mid,mid_grouped --reps 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="tiny,mid,mid_grouped", help="comma-separated: tiny, mid, mid_grouped, micro")
    parser.add_argument("--reps", type=int, default=10, help="timed generates per variant")
    args = parser.parse_args()

    sys.path.insert(0, REPO_ROOT)  # the benchmarks package
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks.common import MICRO, MID, TINY, save_random_checkpoint
    from benchmarks.rollout import EOS_ID, GROUP, PAD_ID, make_prompts
    from ntl_jax.models import decoder
    from ntl_jax.models.hf_io import from_pretrained
    from ntl_jax.models.sampler import Sampler, SamplingParams

    shipped = decoder.grouped_attention

    def one_contraction(*a, per_group_member=False, **kw):
        return shipped(*a, per_group_member=False, **kw)

    cases = {"tiny": (TINY, None), "mid": (MID, None), "mid_grouped": (MID, GROUP), "micro": (MICRO, None)}
    work = tempfile.mkdtemp(prefix="ab_decode_attention_")
    for name in args.cases.split(","):
        if name not in cases:
            raise SystemExit(f"--cases has {name!r}; allowed: {', '.join(cases)}")
        spec, group = cases[name]
        model = from_pretrained(save_random_checkpoint(spec, os.path.join(work, name), eos_id=EOS_ID, pad_id=PAD_ID,
                                                       silence_token=EOS_ID))
        graphdef, state = nnx.split(model)
        if group:
            prompts = make_prompts(spec.vocab, batch=group["prompts"], lengths=group["prompt_tokens"])
            params = SamplingParams(max_new_tokens=group["new_tokens"], greedy=True, n=group["samples"])
        else:
            prompts, params = make_prompts(spec.vocab, batch=32), SamplingParams(max_new_tokens=64, greedy=True)
        samplers, outputs = {}, {}
        for variant, attention in (("one_contraction", one_contraction), ("per_group_member", shipped)):
            decoder.grouped_attention = attention  # read when the sampler's programs are traced (first generate)
            try:
                samplers[variant] = Sampler(graphdef, model.config, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID)
                outputs[variant] = samplers[variant].generate(state, prompts, params, jax.random.key(0))
            finally:
                decoder.grouped_attention = shipped
        times = {variant: [] for variant in samplers}
        for rep in range(args.reps):
            order = list(samplers) if rep % 2 else list(samplers)[::-1]
            for variant in order:
                start = time.perf_counter()
                samplers[variant].generate(state, prompts, params, jax.random.key(0))
                times[variant].append(time.perf_counter() - start)
        tokens = len(prompts) * params.n * params.max_new_tokens
        tok_s = {variant: tokens / float(np.median(t)) for variant, t in times.items()}
        same = all(np.array_equal(getattr(outputs["one_contraction"], field), getattr(outputs["per_group_member"], field))
                   for field in ("response_ids", "response_mask"))
        print(json.dumps({"case": name, "groups": spec.heads // spec.kv_heads, "reps": args.reps,
                          **{f"{v}_tok_s": round(x) for v, x in tok_s.items()},
                          "ratio": round(tok_s["per_group_member"] / tok_s["one_contraction"], 3),
                          "same_tokens": same}), flush=True)


if __name__ == "__main__":
    main()
