"""Learning parity: ntl-jax PPO vs TRL's `GRPOTrainer` from the same warm-started checkpoint, same settings.

    python -m benchmarks.learning_parity --seeds 0,1,2 --output_dir docs/learning_parity

Per seed, the embedded default's supervised warm start (`configs/standard.gin`, `WarmStartConfig.seed = seed`) is
built once and saved with `save_pretrained`; both trainers start from that folder and use the settings of
`configs/standard.gin` (group-normalised advantages, `rollout_n` samples per prompt, `train_batch_size` prompts per
iteration, `ppo_mini_batch_size` prompts per optimiser step, `ppo_epochs` passes, clip, low-variance KL loss
`kl_loss_coef`, temperature, `max_response_length`, learning rate `actor_lr` and its schedule, gradient clipping, the
exact-match arithmetic reward):

| ntl-jax (`PPOConfig`)          | TRL (`GRPOConfig`)                                                 |
|--------------------------------|--------------------------------------------------------------------|
| rollout_n                      | num_generations                                                    |
| train_batch_size * rollout_n   | generation_batch_size (= per_device_train_batch_size * steps_per_generation) |
| ppo_mini_batch_size * rollout_n | per_device_train_batch_size (completions per optimiser step)      |
| train_batch_size / ppo_mini_batch_size | steps_per_generation                                       |
| ppo_epochs                     | num_iterations                                                     |
| clip_ratio_low / _high         | epsilon / epsilon_high                                             |
| kl_loss_coef (low_var_kl = k3) | beta (TRL's KL term is k3)                                         |
| loss_agg_mode token-mean over the mini-batch | loss_type 'dapo' (tokens of the whole batch)         |
| norm_adv_by_std_in_grpo        | scale_rewards 'group'                                              |
| actor_lr, weight_decay, grad_clip | learning_rate (lr_scheduler_type 'constant'), weight_decay, max_grad_norm |
| lr_scheduler_type 'cosine', lr_warmup_steps, min_lr_ratio, num_cycles | a `LambdaLR` over TRL's optimiser with ntl-jax's `lr_multiplier(step // steps_per_iteration)` (verl steps once per iteration; HF's own 'cosine' steps every update) |

Held-out greedy accuracy is measured for *both* sides by the same code (`ntl_jax.warm_start.greedy_eval` on
the embedded validation set): TRL's policy is saved every `eval_every` iterations and scored afterwards. Known
differences: prompt order (each side shuffles with its own sampler), TRL reuses the same mini-batch split in every
epoch, and TRL's k3 is not clamped at 10.

Writes `learning_parity.json`, `learning_parity.md` (table) and `learning_parity.png` (curves) to `--output_dir`.
Each side runs in its own process (`benchmarks.common.run_worker`); PyTorch at the `--torch_threads` setting.
`--smoke`: the toy task (`common.TOY_TASK_BINDINGS`), 2 iterations, held-out evaluation after each (seconds; what
tests/test_benchmarks.py runs).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import TORCH_THREAD_SETTINGS, TOY_TASK_BINDINGS, machine_info, run_worker, worker_main

CONFIG = "configs/standard.gin"


def _parse_config(output_dir: str, seed: int, bindings: list[str]):
    """The embedded default's ExperimentConfig for ``seed`` (gin: configs/standard.gin + bindings)."""
    import gin

    from ntl_jax.train import build_experiment, parse_gin

    gin.clear_config()
    parse_gin([CONFIG], [f"ntl_jax.TrainerConfig.seed = {seed}", *bindings])
    return build_experiment(output_dir)


def _task_and_warm():
    from ntl_jax.embedded import EmbeddedTaskConfig
    from ntl_jax.warm_start import WarmStartConfig

    return EmbeddedTaskConfig(), WarmStartConfig()


# ----------------------------------------------------------------------------------------------- workers
def warm_start(args: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) the seed's warm start in ``<dir>/warm_start``; return its path and statistics."""
    import dataclasses

    from ntl_jax.embedded import prepare_embedded_default

    config = _parse_config(args["dir"], args["seed"], args["bindings"])
    task, warm = _task_and_warm()
    warm = dataclasses.replace(warm, seed=args["seed"] if warm.seed is None else warm.seed)
    embedded = prepare_embedded_default(args["dir"], task=task, warm=warm,
                                        max_new_tokens=config.ppo.max_response_length, progress=False)
    return {"path": embedded.policy_path, "steps": embedded.warm_start["steps"],
            "selection_acc": embedded.warm_start["final"]["acc"]}


def ntl_jax_side(args: dict[str, Any]) -> dict[str, Any]:
    """The real trainer (``create_ppo_trainer``) for ``iterations`` steps, validating every ``eval_every``."""
    import dataclasses

    from ntl_jax.embedded import embedded_rows
    from ntl_jax.models.tokenizers import load_tokenizer
    from ntl_jax.ppo.factory import create_ppo_trainer

    config = _parse_config(args["dir"], args["seed"], args["bindings"])
    config = config.replace(trainer=dataclasses.replace(
        config.trainer, total_training_steps=args["iterations"], test_freq=args["eval_every"],
        save_freq=10**9, resume_mode="disable", use_tensorboard=False, progress_bar=False))
    task, _ = _task_and_warm()
    train_rows, val_rows, _ = embedded_rows(task)
    trainer = create_ppo_trainer(config, load_tokenizer(args["path"]), policy_path=args["path"],
                                 train_rows=train_rows, val_rows=val_rows)
    start = time.perf_counter()
    try:
        trainer.fit()
    finally:
        trainer.close()
    curve = [(int(h["training/global_step"]), h[k]) for h in trainer.history for k in h
             if k.startswith("val-core/") and "/acc/" in k]
    return {"curve": curve, "train_s": time.perf_counter() - start,
            "score": [h["critic/score/mean"] for h in trainer.history if "critic/score/mean" in h]}


def trl_side(args: dict[str, Any]) -> dict[str, Any]:
    """TRL ``GRPOTrainer`` with the mapped settings; the policy is saved every ``eval_every`` iterations."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ntl_jax.embedded import embedded_rows
    from ntl_jax.ppo.lr_schedule import is_flat, schedule_settings

    torch.set_num_threads(args["threads"])
    ppo = _parse_config(args["dir"], args["seed"], args["bindings"]).ppo
    task, _ = _task_and_warm()
    train_rows, _, _ = embedded_rows(task)
    dataset = Dataset.from_list([{"prompt": r["prompt"][-1]["content"],
                                  "ground_truth": str(r["reward_model"]["ground_truth"])} for r in train_rows])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args["path"])
    model = AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.float32)
    steps_per_generation = ppo.train_batch_size // ppo.ppo_mini_batch_size
    steps_per_iteration = steps_per_generation * ppo.ppo_epochs
    config = GRPOConfig(
        output_dir=os.path.join(args["dir"], "trl"), use_cpu=True, report_to="none", bf16=False, seed=args["seed"],
        per_device_train_batch_size=ppo.ppo_mini_batch_size * ppo.rollout_n, steps_per_generation=steps_per_generation,
        num_generations=ppo.rollout_n, num_iterations=ppo.ppo_epochs, max_completion_length=ppo.max_response_length,
        temperature=ppo.temperature, epsilon=ppo.clip_ratio_low, epsilon_high=ppo.clip_ratio_high,
        beta=ppo.kl_loss_coef if ppo.use_kl_loss else 0.0, loss_type="dapo",
        scale_rewards="group" if ppo.norm_adv_by_std_in_grpo else "none", learning_rate=ppo.actor_lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=ppo.weight_decay, max_grad_norm=ppo.grad_clip,
        max_steps=args["iterations"] * steps_per_iteration, logging_steps=steps_per_iteration, save_strategy="no",
        gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0)
    saved: list[tuple[int, str]] = []

    def save(iteration: int) -> None:
        path = os.path.join(args["dir"], "trl_policies", f"iteration_{iteration}")
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        saved.append((iteration, path))

    class SaveEvery(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step % (steps_per_iteration * args["eval_every"]) == 0:
                save(state.global_step // steps_per_iteration)

    scores: list[float] = []

    class LogScores(TrainerCallback):
        def on_log(self, train_args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                scores.append(float(logs["reward"]))

    def reward(completions: list[str], ground_truth: list[str], **_: Any) -> list[float]:
        from ntl_jax.rewards.registry import default_compute_score, normalize_reward_output

        return [normalize_reward_output(default_compute_score("arithmetic", text, truth))[0]
                for text, truth in zip(completions, ground_truth)]

    trainer_class = GRPOTrainer if is_flat(**schedule_settings(ppo)) else \
        _per_iteration_schedule(GRPOTrainer, ppo, args["iterations"], steps_per_iteration)
    trainer = trainer_class(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[SaveEvery(), LogScores()])
    start = time.perf_counter()
    trainer.train()
    return {"saved": saved, "train_s": time.perf_counter() - start, "score": scores,
            "threads": torch.get_num_threads()}


def _per_iteration_schedule(trainer_class: type, ppo: Any, iterations: int, steps_per_iteration: int) -> type:
    """``trainer_class`` whose scheduler gives optimiser step k ``actor_lr * lr_multiplier(k // steps_per_iteration)``:
    ntl-jax's (verl's) schedule exactly, one rate per iteration."""
    from torch.optim.lr_scheduler import LambdaLR

    from ntl_jax.ppo.lr_schedule import lr_multiplier, schedule_settings

    def multiplier(step: int) -> float:
        return lr_multiplier(step // steps_per_iteration, total_iterations=iterations, **schedule_settings(ppo))

    class PerIterationSchedule(trainer_class):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = LambdaLR(optimizer or self.optimizer, multiplier)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return PerIterationSchedule


def evaluate(args: dict[str, Any]) -> dict[str, Any]:
    """Greedy held-out accuracy of each saved policy folder, by ntl-jax's evaluator (the one both sides share)."""
    from ntl_jax.embedded import embedded_rows
    from ntl_jax.models.hf_io import from_pretrained
    from ntl_jax.models.sampler import Sampler
    from ntl_jax.models.tokenizers import load_tokenizer
    from ntl_jax.warm_start import greedy_eval

    _parse_config(args["dir"], args["seed"], args["bindings"])  # the task's gin bindings (e.g. its held-out size)
    task, _ = _task_and_warm()
    _, val_rows, _ = embedded_rows(task)
    out = []
    for iteration, path in args["saved"]:
        model, tokenizer = from_pretrained(path), load_tokenizer(path)
        from flax import nnx

        graphdef, params = nnx.split(model)
        sampler = Sampler(graphdef, model.config, eos_token_ids=[tokenizer.eos_token_id],
                          pad_token_id=tokenizer.pad_token_id)
        prompts = [tokenizer(r["prompt"][-1]["content"], add_special_tokens=False)["input_ids"] for r in val_rows]
        result = greedy_eval(sampler, params, val_rows, prompts, tokenizer, args["max_new_tokens"])
        out.append((iteration, result["acc"]))
    return {"curve": out}


# ----------------------------------------------------------------------------------------------- driver
def run_seed(seed: int, output_dir: str, iterations: int, eval_every: int, torch_setting: str,
             bindings: list[str]) -> dict[str, Any]:
    seed_dir = os.path.join(output_dir, f"seed_{seed}")
    common = {"seed": seed, "dir": seed_dir, "bindings": bindings}
    warm = run_worker("learning_parity", "warm_start", common)
    args = {**common, "path": warm["path"], "iterations": iterations, "eval_every": eval_every}
    ours = run_worker("learning_parity", "ntl_jax_side", {**args, "dir": os.path.join(seed_dir, "ntl_jax")})
    threads, env = TORCH_THREAD_SETTINGS[torch_setting]
    trl = run_worker("learning_parity", "trl_side", {**args, "threads": threads, "dir": os.path.join(seed_dir, "trl")},
                     env=env)
    max_new = _parse_config(seed_dir, seed, bindings).ppo.max_response_length
    trl_curve = run_worker("learning_parity", "evaluate", {**common, "saved": trl["saved"],
                                                           "max_new_tokens": max_new})["curve"]
    before = ours["curve"][0][1]
    return {"seed": seed, "warm_start": warm, "ntl_jax": {**ours, "curve": ours["curve"]},
            "trl": {**trl, "curve": [(0, before)] + [tuple(p) for p in trl_curve]}}


def summarise(runs: list[dict[str, Any]]) -> str:
    lines = ["| seed | warm start (held-out acc) | ntl-jax final | TRL final | ntl-jax wall (s) | TRL wall (s) |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['ntl_jax']['curve'][0][1]:.3f} | {r['ntl_jax']['curve'][-1][1]:.3f} | "
                     f"{r['trl']['curve'][-1][1]:.3f} | {r['ntl_jax']['train_s']:.0f} | {r['trl']['train_s']:.0f} |")
    ours = np.array([r["ntl_jax"]["curve"][-1][1] for r in runs])
    theirs = np.array([r["trl"]["curve"][-1][1] for r in runs])
    warm = np.array([r["ntl_jax"]["curve"][0][1] for r in runs])
    lines.append(f"| mean | {warm.mean():.3f} | **{ours.mean():.3f}** | **{theirs.mean():.3f}** | | |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), squeeze=False)
    for ax, r in zip(axes[0], runs):
        for side, style in (("ntl_jax", "-o"), ("trl", "--s")):
            xs, ys = zip(*r[side]["curve"])
            ax.plot(xs, ys, style, label="ntl-jax" if side == "ntl_jax" else "TRL GRPOTrainer", markersize=3)
        ax.set_title(f"seed {r['seed']}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out greedy accuracy")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (warm start and RL)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="PPO iterations per side (default: TrainerConfig.total_training_steps of the config)")
    parser.add_argument("--eval_every", type=int, default=25, help="iterations between held-out evaluations")
    parser.add_argument("--torch_threads", default="1thr", choices=sorted(TORCH_THREAD_SETTINGS),
                        help="PyTorch thread setting of the TRL side (benchmarks.common.TORCH_THREAD_SETTINGS)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings for both sides")
    parser.add_argument("--output_dir", default="outputs/learning_parity")
    parser.add_argument("--smoke", action="store_true",
                        help="toy task, 2 iterations, evaluation every iteration (checks the script; numbers "
                             "mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.gin_bindings = [*TOY_TASK_BINDINGS, *args.gin_bindings]
        args.iterations, args.eval_every = args.iterations or 2, 1
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    os.makedirs(args.output_dir, exist_ok=True)
    iterations = args.iterations or _parse_config(args.output_dir, 0, args.gin_bindings).trainer.total_training_steps
    report: dict[str, Any] = {"machine": machine_info(), "iterations": iterations, "eval_every": args.eval_every,
                              "torch_threads": args.torch_threads, "bindings": args.gin_bindings, "runs": []}
    for seed in seeds:
        print(f"[learning_parity] seed {seed}", flush=True)
        report["runs"].append(run_seed(seed, args.output_dir, iterations, args.eval_every, args.torch_threads,
                                       args.gin_bindings))
        with open(os.path.join(args.output_dir, "learning_parity.json"), "w") as f:
            json.dump(report, f, indent=1)
    table = summarise(report["runs"])
    with open(os.path.join(args.output_dir, "learning_parity.md"), "w") as f:
        f.write(table + "\n")
    plot(report["runs"], os.path.join(args.output_dir, "learning_parity.png"))
    print(table, flush=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main({"warm_start": warm_start, "ntl_jax_side": ntl_jax_side, "trl_side": trl_side,
                     "evaluate": evaluate})
    else:
        main()
