#!/usr/bin/env python
"""PPO iterations at the GSM8K recipe's real shapes, on random weights: does the real-scale path run, how fast,
how much memory.

    python scripts/smoke_real_shapes.py                               # Qwen2.5-0.5B shapes, the recipe's sizes
    python scripts/smoke_real_shapes.py --layers 2 --hidden 64 --vocab 4096 --prompts 8 \\
        --prompt_length 256 --response_length 32 --platform any       # the reduced run CI does on the CPU

A random model with Qwen2.5-0.5B-Instruct's config (configs/models/; ``--layers``/``--hidden``/``--vocab`` shrink
it) and a Qwen-style byte-level BPE tokenizer built here from GSM8K text (every digit its own token, ``<|im_end|>``
the end of a turn, Qwen's chat template) are written to a temporary folder; then the shipped config
``configs/gsm8k_qwen2_5_0_5b_ntl_final.gin`` (GAE with a critic, the frozen reference, KL in the reward, NTL on the
final answer) trains on real GSM8K prompts (``../shared/data/gsm8k`` or ``--gsm8k_dir``) for ``--iterations``
iterations at its shapes: 256 prompts, prompts up to 512 and responses up to 512 tokens unless reduced. The random
policy never emits an end token, so every response runs to the full length: the worst case of the recipe.

Prints, per iteration, the time of each phase, tokens per second, peak device memory (``memory_stats`` of an
accelerator; the process's peak RSS on the CPU) and the number of XLA compilations so far.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "gsm8k_qwen2_5_0_5b_ntl_final.gin")
MODEL_CONFIG = os.path.join(REPO_ROOT, "configs", "models", "qwen2.5-0.5b-instruct.json")
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gsm8k_dir", default=os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "gsm8k"))
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=256, help="prompts per iteration (the recipe: 256)")
    parser.add_argument("--prompt_length", type=int, default=512, help="max prompt tokens (the recipe: 512)")
    parser.add_argument("--response_length", type=int, default=512, help="max response tokens (the recipe: 512)")
    parser.add_argument("--layers", type=int, help="shrink the model: decoder layers (Qwen2.5-0.5B: 24)")
    parser.add_argument("--hidden", type=int, help="shrink the model: width (896), MLP 5.43x, 64-wide heads")
    parser.add_argument("--vocab", type=int, help="shrink the model: vocabulary (151,936)")
    parser.add_argument("--platform", default="accelerator", help="TrainerConfig.platform (any for the CPU)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
    parser.add_argument("--json", help="also write each iteration's phase timings, throughput and memory here")
    return parser.parse_args(argv)


def build_tokenizer(texts: list[str]):
    from ntl_jax.models.tokenizers import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(texts, vocab_size=2000,
                                     special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_model(directory: str, tokenizer, args: argparse.Namespace) -> dict:
    from flax import nnx

    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM
    from ntl_jax.models.hf_io import save_pretrained

    with open(MODEL_CONFIG, encoding="utf-8") as f:
        hf = json.load(f)
    if args.layers:
        hf["num_hidden_layers"] = args.layers
    if args.hidden:
        heads = max(1, args.hidden // 64)
        hf.update(hidden_size=args.hidden, intermediate_size=int(args.hidden * 5.43) // 8 * 8,
                  num_attention_heads=heads, num_key_value_heads=max(1, heads // 7))
    if args.vocab:
        hf["vocab_size"] = args.vocab
    if hf["vocab_size"] < len(tokenizer):
        raise ValueError(f"--vocab={hf['vocab_size']} is invalid; allowed: >= the tokenizer's {len(tokenizer)} tokens")
    hf.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    config = ModelConfig.from_hf_dict(hf)
    save_pretrained(CausalLM(config, rngs=nnx.Rngs(0)), directory, tokenizer=tokenizer)
    return hf


def compile_counter():
    """A list that grows by one per XLA backend compilation."""
    import jax

    compiles: list[float] = []

    def listener(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return compiles


def peak_memory_gib() -> tuple[float, str]:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO_ROOT)
    import gin
    import jax

    from ntl_jax.data.gsm8k import convert_gsm8k_split, read_gsm8k_jsonl
    from ntl_jax.models.tokenizers import load_tokenizer
    from ntl_jax.ppo.factory import create_ppo_trainer
    from ntl_jax.train import build_experiment, check_backend, parse_gin

    compiles = compile_counter()
    train_rows = convert_gsm8k_split(read_gsm8k_jsonl(os.path.join(args.gsm8k_dir, "train.jsonl")), "train")
    with tempfile.TemporaryDirectory(prefix="smoke_real_shapes_") as workdir:
        texts = [r["extra_info"]["question"] + "\n" + r["extra_info"]["answer"] for r in train_rows[:2000]]
        model_dir = os.path.join(workdir, "model")
        shape = build_model(model_dir, build_tokenizer(texts), args)
        gin.clear_config()
        parse_gin([CONFIG], [f"ntl_jax.TrainerConfig.model_path = '{model_dir}'",
                             f"ntl_jax.TrainerConfig.output_dir = '{os.path.join(workdir, 'run')}'",
                             f"ntl_jax.TrainerConfig.platform = '{args.platform}'",
                             f"ntl_jax.PPOConfig.train_batch_size = {args.prompts}",
                             f"ntl_jax.PPOConfig.ppo_mini_batch_size = {min(64, args.prompts)}",
                             f"ntl_jax.PPOConfig.log_prob_micro_batch_size_per_device = {min(32, args.prompts)}",
                             f"ntl_jax.PPOConfig.max_prompt_length = {args.prompt_length}",
                             f"MAX_RESPONSE_LENGTH = {args.response_length}",
                             "ntl_jax.TrainerConfig.truncation = 'left'",
                             "ntl_jax.TrainerConfig.use_tensorboard = False",
                             "ntl_jax.TrainerConfig.progress_bar = False", *args.gin_bindings])
        config = build_experiment()
        print(check_backend(config.trainer.platform), flush=True)
        tokenizer = load_tokenizer(model_dir)
        start = time.perf_counter()
        trainer = create_ppo_trainer(config, tokenizer, policy_path=model_dir, train_rows=train_rows, val_rows=[])
        print(f"model: {shape['num_hidden_layers']} layers, width {shape['hidden_size']}, vocab {shape['vocab_size']};"
              f" {args.prompts} prompts x (<= {args.prompt_length} + {args.response_length}) tokens; trainer built in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        report = {"backend": jax.default_backend(), "model": shape, "prompts": args.prompts,
                  "prompt_length": args.prompt_length, "response_length": args.response_length, "iterations": []}
        try:
            for iteration in range(args.iterations):
                metrics = trainer.train_step(trainer.loader.next_batch())
                trainer.global_step += 1
                jax.block_until_ready(trainer.runtime.models.policy.params)
                phases = ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in sorted(metrics.items())
                                   if k.startswith("timing_s/") and k != "timing_s/step")
                memory, kind = peak_memory_gib()
                print(f"iteration {iteration + 1}: {metrics['timing_s/step']:.1f} s ({phases}); "
                      f"{metrics['perf/throughput']:.0f} tokens/s per device; response length "
                      f"{metrics['response_length/mean']:.0f}; {kind} {memory:.2f} GiB; {len(compiles)} compilations "
                      "so far", flush=True)
                report["iterations"].append({
                    **{k: float(v) for k, v in metrics.items() if k.startswith(("timing_s/", "perf/"))},
                    "response_length": float(metrics["response_length/mean"]), "memory_gib": memory,
                    "memory_kind": kind, "compilations_so_far": len(compiles)})
                if args.json:  # rewritten each iteration: a run cut short still leaves what it measured
                    with open(args.json, "w") as f:
                        json.dump(report, f, indent=2)
        finally:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
