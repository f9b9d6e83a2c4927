#!/usr/bin/env python
"""Generate configs/README.md: every gin-configurable parameter of ntl-jax with its default and meaning.

    python scripts/gen_config_docs.py            # rewrite configs/README.md
    python scripts/gen_config_docs.py --check    # exit 1 if configs/README.md is out of date

The configurables are found in gin's registry after importing the modules the CLI imports (so a new
``@gin.configurable(module="ntl_jax")`` shows up without touching this script). For each dataclass field (or
function parameter) the meaning is, first match wins: the trailing ``# comment`` on the field's line in the source,
the ``name: text`` entry of the class docstring, or ``FALLBACK_MEANINGS`` below. A full-line comment above a
group of fields (``# Batch geometry.``) becomes a sub-heading. Macros (``NAME = value`` lines of configs/*.gin) are
listed with ``MACRO_MEANINGS``. A parameter or macro with no meaning anywhere is an error, so the document is
complete by construction; tests/test_config_docs.py fails when the committed file differs from the output.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
from typing import Any, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
README_PATH = os.path.join(CONFIG_DIR, "README.md")
GIN_MODULE = "ntl_jax"
# The modules whose import registers the configurables (the same ones ntl_jax.train.parse_gin imports).
CONFIG_MODULES = ("ntl_jax.ppo.config", "ntl_jax.ntl.config", "ntl_jax.embedded", "ntl_jax.ppo.warm_start")

# Meanings of parameters that have neither a trailing comment nor a docstring entry. Keys: "<Class>.<field>".
FALLBACK_MEANINGS: dict[str, str] = {
    # PPOConfig (verl: data.*, actor_rollout_ref.actor.*, algorithm.*, critic.*, actor_rollout_ref.rollout.*)
    "PPOConfig.train_batch_size": "prompts per PPO iteration (verl `data.train_batch_size`); each is sampled "
                                  "`rollout_n` times",
    "PPOConfig.rollout_n": "responses sampled per prompt (verl `rollout.n`); 'grpo' and 'rloo' need >= 2",
    "PPOConfig.ppo_mini_batch_size": "prompts per optimiser step (verl `actor.ppo_mini_batch_size`): "
                                     "`train_batch_size / ppo_mini_batch_size` steps per PPO epoch",
    "PPOConfig.ppo_epochs": "passes over each iteration's responses (verl `actor.ppo_epochs`)",
    "PPOConfig.max_prompt_length": "prompt tokens; longer prompts are filtered or truncated "
                                   "(`TrainerConfig.truncation`, `filter_overlong_prompts`)",
    "PPOConfig.max_response_length": "new tokens sampled at most per response (also the greedy validation limit)",
    "PPOConfig.adv_estimator": "'gae' (critic + GAE), 'grpo' (group-normalised scores) or 'rloo' (leave-one-out)",
    "PPOConfig.gamma": "GAE discount",
    "PPOConfig.lam": "GAE lambda",
    "PPOConfig.norm_adv_by_std_in_grpo": "GRPO divides by the group's std; False = Dr.GRPO (mean-centred only)",
    "PPOConfig.clip_ratio_low": "PPO clip: ratio lower bound is `1 - clip_ratio_low`",
    "PPOConfig.clip_ratio_high": "PPO clip: ratio upper bound is `1 + clip_ratio_high`",
    "PPOConfig.clip_ratio_c": "dual-clip constant: for negative advantages the loss is capped at `-A * c`",
    "PPOConfig.loss_agg_mode": "how token losses become one number: 'token-mean', 'seq-mean-token-sum', "
                               "'seq-mean-token-mean', 'seq-mean-token-sum-norm'",
    "PPOConfig.entropy_coeff": "weight of the entropy bonus subtracted from the actor loss",
    "PPOConfig.use_kl_loss": "add `kl_loss_coef * KL(policy || reference)` to the actor loss (GRPO style)",
    "PPOConfig.kl_loss_coef": "weight of the KL loss",
    "PPOConfig.kl_loss_type": "KL estimator of the KL loss: 'kl', 'abs', 'mse', 'low_var_kl'",
    "PPOConfig.use_kl_in_reward": "subtract `kl_coef * KL` per token from the rewards (PPO style)",
    "PPOConfig.kl_penalty": "KL estimator of the in-reward penalty: 'kl', 'abs', 'mse', 'low_var_kl'",
    "PPOConfig.kl_ctrl_type": "in-reward KL coefficient: 'fixed' or 'adaptive' (towards `kl_target`)",
    "PPOConfig.kl_coef": "in-reward KL coefficient (the starting value when adaptive)",
    "PPOConfig.kl_target": "adaptive KL controller: target KL",
    "PPOConfig.kl_horizon": "adaptive KL controller: horizon (responses)",
    "PPOConfig.cliprange_value": "critic: values are clipped to `old_value +- cliprange_value` in the value loss",
    "PPOConfig.critic_warmup": "iterations that update only the critic before the actor starts",
    "PPOConfig.actor_lr": "actor AdamW learning rate",
    "PPOConfig.critic_lr": "critic AdamW learning rate",
    "PPOConfig.weight_decay": "AdamW decoupled weight decay (actor and critic)",
    "PPOConfig.grad_clip": "global-norm gradient clipping (actor and critic)",
    "PPOConfig.lr_warmup_steps": "linear learning-rate warm-up from 0, in optimiser steps (0 = none)",
    "PPOConfig.temperature": "rollout sampling temperature",
    "PPOConfig.top_k": "rollout top-k sampling (0 = off)",
    "PPOConfig.top_p": "rollout nucleus sampling (1.0 = off)",
    "PPOConfig.max_consecutive_skipped_updates": "stop with an error after this many consecutive updates with a "
                                                 "non-finite loss or gradient (each is skipped)",
    "PPOConfig.logprob_chunk_size": "response positions per chunk of the LM-head / log-prob computation: memory "
                                    "grows with batch x chunk x vocab, never with the full length",
    # TrainerConfig (verl: trainer.*, data.*, custom_reward_function.*)
    "TrainerConfig.output_dir": "run directory: checkpoints, metrics.jsonl, TensorBoard, operative config "
                                "(`--output_dir` overrides it)",
    "TrainerConfig.seed": "seed of sampling, data order and critic-head initialisation",
    "TrainerConfig.total_epochs": "passes over the training prompts (when `total_training_steps` is 0)",
    "TrainerConfig.test_freq": "validate every this many iterations (and after the last)",
    "TrainerConfig.save_freq": "checkpoint every this many iterations (and after the last, and on SIGTERM)",
    "TrainerConfig.max_to_keep": "checkpoints kept",
    "TrainerConfig.resume_mode": "'auto' resumes from the newest good checkpoint in `output_dir`; 'disable' starts "
                                 "fresh",
    "TrainerConfig.val_before_train": "validate once before the first iteration",
    "TrainerConfig.model_path": "local Hugging Face folder (config.json + safetensors) of the policy; None = the "
                                "embedded default (tiny decoder, character tokenizer, generated arithmetic)",
    "TrainerConfig.tokenizer_path": "tokenizer folder when it is not `model_path`",
    "TrainerConfig.critic_path": "critic checkpoint; None = critic initialised from the policy (verl's default)",
    "TrainerConfig.dtype": "'float32' or 'bfloat16' model dtype (see the GSM8K configs' dtype note)",
    "TrainerConfig.remat": "rematerialise each decoder layer in the backward pass (less memory, ~1/3 more compute)",
    "TrainerConfig.train_files": "verl-format parquet files of training prompts (with `model_path`)",
    "TrainerConfig.val_files": "verl-format parquet files of validation prompts",
    "TrainerConfig.val_batch_size": "prompts per validation generation batch",
    "TrainerConfig.truncation": "overlong prompts: 'error', 'left' or 'right' truncation",
    "TrainerConfig.filter_overlong_prompts": "drop prompts longer than `max_prompt_length` (before truncation)",
    "TrainerConfig.reward_fn_path": "Python file with a custom reward function (verl `custom_reward_function.path`);"
                                    " None = built-in functions",
    "TrainerConfig.reward_fn_name": "reward function name: in `reward_fn_path`, or built-in 'compute_score', "
                                    "'custom_ntl_final', 'custom_ntl_all'",
    "TrainerConfig.reward_fn_kwargs": "extra keyword arguments bound to the reward function, as ((name, value), ...)",
    "TrainerConfig.reward_runner": "'local' (in-process, with a timeout) or 'ray' (remote workers)",
    "TrainerConfig.reward_num_workers": "Ray reward workers",
    "TrainerConfig.reward_timeout_s": "seconds a reward call may take before it gets `reward_fallback_score`",
    "TrainerConfig.reward_fallback_score": "score of a sample whose reward function raised or timed out",
    "TrainerConfig.rollout_mode": "'colocated' (generate on the training devices) or 'ray' (remote rollout workers)",
    "TrainerConfig.rollout_num_workers": "Ray rollout workers",
    "TrainerConfig.mesh_data": "data-parallel mesh axis size",
    "TrainerConfig.mesh_fsdp": "FSDP mesh axis size (shards parameters and optimiser state; also splits the batch)",
    "TrainerConfig.mesh_tensor": "tensor-parallel mesh axis size (vocab, MLP and heads)",
    "TrainerConfig.use_tensorboard": "write TensorBoard event files in `output_dir/tensorboard`",
    "TrainerConfig.use_wandb": "also log to Weights & Biases (needs `pip install wandb`; off by default)",
    "TrainerConfig.wandb_project": "Weights & Biases project",
    "TrainerConfig.progress_bar": "show tqdm progress bars",
    # ExperimentConfig
    "ExperimentConfig.ppo": "algorithm settings (`ntl_jax.PPOConfig` bindings)",
    "ExperimentConfig.trainer": "run settings (`ntl_jax.TrainerConfig` bindings)",
    "ExperimentConfig.use_ntl_trainer": "build the NTL trainer (also enables `NTLConfig`); set through the "
                                        "`use_ntl_trainer` macro",
    # NTLConfig fields its docstring does not name as keys
    "NTLConfig.hybrid_weight": "reward_mode 'hybrid': weight of final-answer targets (other digits get "
                               "`1 - hybrid_weight`)",
    # EmbeddedTaskConfig
    "EmbeddedTaskConfig.num_train": "generated training problems",
    "EmbeddedTaskConfig.num_val": "generated held-out problems (validation)",
    "EmbeddedTaskConfig.ops": "operators to draw from ('+', '-', '*')",
    "EmbeddedTaskConfig.min_digits": "fewest digits per operand",
    "EmbeddedTaskConfig.max_digits": "most digits per operand",
    "EmbeddedTaskConfig.hidden_size": "tiny decoder width",
    "EmbeddedTaskConfig.num_layers": "tiny decoder layers",
    "EmbeddedTaskConfig.num_heads": "tiny decoder attention heads",
    "EmbeddedTaskConfig.num_kv_heads": "tiny decoder key/value heads (grouped-query attention)",
    "EmbeddedTaskConfig.intermediate_size": "tiny decoder MLP width",
    "EmbeddedTaskConfig.data_seed": "seed of the generated problems (validation uses data_seed + 1)",
    # WarmStartConfig
    "WarmStartConfig.max_steps": "most supervised steps (the warm start stops earlier at `target_accuracy`)",
    "WarmStartConfig.batch_size": "supervised batch size",
    "WarmStartConfig.learning_rate": "peak AdamW learning rate (warm-up, then cosine decay to 10%)",
    "WarmStartConfig.warmup_steps": "linear warm-up steps",
    "WarmStartConfig.ntl_weight": "weight of NTL in `CE + ntl_weight * NTL`",
    "WarmStartConfig.ntl_method": "NTL variant of the warm start: 'mse', 'wasserstein' or 'number'",
    "WarmStartConfig.eval_every": "steps between greedy held-out evaluations",
    "WarmStartConfig.eval_samples": "held-out problems per evaluation",
    "WarmStartConfig.target_accuracy": "stop once greedy held-out accuracy reaches this",
    "WarmStartConfig.seed": "seed of the tiny decoder's initialisation and of batch sampling",
    # temperature_schedule (gin-configurable function)
    "temperature_schedule.kind": "'constant', 'linear', 'cosine' or 'exponential'",
    "temperature_schedule.start": "tau at step 0",
    "temperature_schedule.end": "tau at `steps` (required unless kind='constant')",
    "temperature_schedule.steps": "steps of the ramp (required unless kind='constant')",
}

# Macros defined in configs/*.gin (bind them like parameters: --gin_bindings="MODEL_PATH='/models/qwen'").
MACRO_MEANINGS: dict[str, str] = {
    "use_ntl_trainer": "the one switch between standard PPO and PPO + NTL: sets `ExperimentConfig.use_ntl_trainer` "
                       "and `NTLConfig.enabled`",
    "MODEL_PATH": "GSM8K configs: local Hugging Face folder of the policy (`TrainerConfig.model_path`)",
    "TRAIN_FILES": "GSM8K configs: training parquet files (`TrainerConfig.train_files`)",
    "VAL_FILES": "GSM8K configs: validation parquet files (`TrainerConfig.val_files`)",
    "MAX_RESPONSE_LENGTH": "GSM8K configs: `PPOConfig.max_response_length` (256 = verl's quick start)",
    "PPO_MICRO_BATCH_SIZE_PER_DEVICE": "GSM8K configs: `PPOConfig.ppo_micro_batch_size_per_device` (verl's ppo_micro_batch_size_per_gpu, 4)",
}


@dataclasses.dataclass(frozen=True)
class ParamDoc:
    name: str
    default: str
    meaning: str
    group: str | None


@dataclasses.dataclass(frozen=True)
class ConfigurableDoc:
    selector: str  # e.g. 'ntl_jax.PPOConfig'
    summary: str
    params: tuple[ParamDoc, ...]


def configurables() -> list[tuple[str, Any]]:
    """(selector, class or function) of every configurable registered under the ``ntl_jax`` gin module."""
    import gin

    for module in CONFIG_MODULES:
        importlib.import_module(module)
    # gin has no public listing of its registry; _REGISTRY maps selector -> Configurable in gin 0.5.
    found = [(selector, configurable.wrapped) for selector, configurable in gin.config._REGISTRY.items()
             if configurable.module == GIN_MODULE]
    if not found:
        raise RuntimeError(f"no gin configurables under module {GIN_MODULE!r}; did the imports fail?")
    return sorted(found, key=lambda item: item[0])


def _trailing_comment(line: str) -> str | None:
    """The ``# comment`` ending a source line (tokenize, so '#' inside strings is not taken for one)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, IndentationError):
        return None
    comments = [tok.string for tok in tokens if tok.type == tokenize.COMMENT]
    return comments[-1].lstrip("#").strip() if comments else None


def source_field_notes(obj: Any) -> dict[str, tuple[str | None, str | None]]:
    """field -> (trailing comment, group) for the annotated fields of a class body."""
    source = textwrap.dedent(inspect.getsource(obj))
    lines = source.splitlines()
    tree = ast.parse(source)
    class_def = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    notes: dict[str, tuple[str | None, str | None]] = {}
    group = None
    previous_end = class_def.body[0].end_lineno if class_def.body else class_def.lineno
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = [line.strip() for line in lines[previous_end:node.lineno - 1]]
            headers = [line.lstrip("#").strip() for line in above if line.startswith("#")]
            if headers:
                group = headers[-1]
            notes[node.target.id] = (_trailing_comment(lines[node.end_lineno - 1]), group)
        previous_end = node.end_lineno
    return notes


def docstring_entries(doc: str | None, names: list[str]) -> dict[str, str]:
    """``name: text`` (or ``a / b: text``) entries of a docstring, for the given field names only."""
    if not doc:
        return {}
    text = " ".join(inspect.cleandoc(doc).split())
    name_alt = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    key_re = re.compile(rf"(?<![\w.`])((?:{name_alt})(?:\s*/\s*(?:{name_alt}))*):\s")
    matches = list(key_re.finditer(text))
    entries = {}
    for match, following in zip(matches, matches[1:] + [None]):
        body = text[match.end(): following.start() if following else len(text)].strip()
        for name in re.split(r"\s*/\s*", match.group(1)):
            entries[name] = body.rstrip(".; ")
    return entries


def format_default(value: Any) -> str:
    if value is dataclasses.MISSING or value is inspect.Parameter.empty:
        return "required"
    return repr(value)


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _meaning(key: str, comment: str | None, doc_entry: str | None) -> str:
    meaning = comment or doc_entry or FALLBACK_MEANINGS.get(key)
    if not meaning:
        raise ValueError(f"{key} has no meaning: add a trailing '# comment' in the source or an entry to "
                         "FALLBACK_MEANINGS in scripts/gen_config_docs.py")
    return meaning


def document_class(selector: str, cls: type) -> ConfigurableDoc:
    fields = dataclasses.fields(cls)
    notes = source_field_notes(cls)
    doc_entries = docstring_entries(cls.__doc__, [f.name for f in fields])
    params = []
    for field in fields:
        default: Any = field.default
        if field.default_factory is not dataclasses.MISSING:
            default_text = f"{getattr(field.default_factory, '__name__', 'factory')}()"
        else:
            default_text = format_default(default)
        comment, group = notes.get(field.name, (None, None))
        meaning = _meaning(f"{cls.__name__}.{field.name}", comment, doc_entries.get(field.name))
        params.append(ParamDoc(field.name, default_text, meaning, group))
    return ConfigurableDoc(selector, _summary(cls), tuple(params))


def document_function(selector: str, fn: Callable[..., Any]) -> ConfigurableDoc:
    signature = inspect.signature(fn)
    names = list(signature.parameters)
    doc_entries = docstring_entries(fn.__doc__, names)
    params = tuple(ParamDoc(name, format_default(p.default),
                            _meaning(f"{fn.__name__}.{name}", None, doc_entries.get(name)), None)
                   for name, p in signature.parameters.items())
    return ConfigurableDoc(selector, _summary(fn), params)


def document_all() -> list[ConfigurableDoc]:
    docs = []
    for selector, obj in configurables():
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
            docs.append(document_class(selector, obj))
        elif callable(obj):
            docs.append(document_function(selector, obj))
    return docs


def _description(lines: list[str]) -> str:
    """The file's opening comment paragraph: leading '# ' lines up to a blank one or an indented example."""
    words = []
    for line in lines:
        if not line.startswith("#"):
            break
        text = line[1:]
        if not text.strip() or text.startswith("   "):
            break
        words.append(text.strip())
    return " ".join(words)


def config_files() -> list[tuple[str, str]]:
    """(path relative to configs/, opening comment paragraph) of every gin file."""
    out = []
    for root, _, files in sorted(os.walk(CONFIG_DIR)):
        for name in sorted(files):
            if name.endswith(".gin"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    out.append((os.path.relpath(path, CONFIG_DIR), _description(f.read().splitlines())))
    return out


MACRO_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*$")


def config_macros() -> dict[str, tuple[str, list[str]]]:
    """macro -> (value in the first file defining it, files defining it), from configs/**/*.gin."""
    macros: dict[str, tuple[str, list[str]]] = {}
    for rel_path, _ in config_files():
        with open(os.path.join(CONFIG_DIR, rel_path), encoding="utf-8") as f:
            for line in f:
                match = MACRO_RE.match(line.split("#", 1)[0])
                if match:
                    value, files = macros.setdefault(match.group(1), (match.group(2), []))
                    if rel_path not in files:
                        files.append(rel_path)
    return macros


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(selector: str, params: list[ParamDoc]) -> list[str]:
    rows = ["| parameter | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{selector}.{p.name}` | `{_cell(p.default)}` | {_cell(p.meaning)} |" for p in params]
    return rows


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_docs.py from the config dataclasses; do not edit by hand. -->",
        "<!-- Regenerate with: python scripts/gen_config_docs.py -->",
        "",
        "ntl-jax is configured with [gin](https://github.com/google/gin-config): every knob below is a field of a "
        "validated, frozen dataclass. Set it in a `.gin` file (`ntl_jax.PPOConfig.actor_lr = 1e-6`) or on the "
        "command line (`--gin_bindings=\"ntl_jax.PPOConfig.actor_lr = 1e-6\"`); later files and bindings win. "
        "The short form without `ntl_jax.` works too. A bad value stops the run at start-up with one line naming "
        "the key, the value and what is allowed. Each run writes the values it used to "
        "`<output_dir>/operative_config.gin`.",
        "",
        "## Config files",
        "",
        "| file | what |",
        "| --- | --- |",
    ]
    out += [f"| `configs/{path}` | {_cell(description)} |" for path, description in config_files()]
    out += ["", "## Macros", "", "Defined in config files; bind them like parameters, e.g. "
            "`--gin_bindings=\"MODEL_PATH='/models/Qwen2.5-0.5B-Instruct'\"`.", "",
            "| macro | value | defined in | meaning |", "| --- | --- | --- | --- |"]
    for name, (value, files) in sorted(config_macros().items(), key=lambda item: item[0].lower()):
        if name not in MACRO_MEANINGS:
            raise ValueError(f"macro {name!r} (configs/{files[0]}) has no entry in MACRO_MEANINGS")
        where = ", ".join(f"`{f}`" for f in files)
        out.append(f"| `{name}` | `{_cell(value)}` | {where} | {_cell(MACRO_MEANINGS[name])} |")
    for doc in document_all():
        out += ["", f"## `{doc.selector}`", "", doc.summary]
        groups: list[tuple[str | None, list[ParamDoc]]] = []
        for param in doc.params:
            if not groups or groups[-1][0] != param.group:
                groups.append((param.group, []))
            groups[-1][1].append(param)
        for group, params in groups:
            out += [""] + ([f"**{group.rstrip('.')}**", ""] if group else []) + _table(doc.selector, params)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if configs/README.md is out of date")
    parser.add_argument("--output", default=README_PATH, help="where to write (default configs/README.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = open(args.output, encoding="utf-8").read() if os.path.isfile(args.output) else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
