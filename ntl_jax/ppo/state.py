"""Model state of a PPO run: policy, critic, frozen reference, optimisers, placed on the mesh.

Python keeps ``(graphdef, state)`` pairs; every hot step takes the state arrays as jit arguments with the
shardings they were placed with (:func:`ntl_jax.ppo.steps.tree_shardings`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ntl_jax.models import decoder
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.hf_io import from_pretrained
from ntl_jax.models.sharding import LOGICAL_AXIS_RULES, shard_state
from ntl_jax.ppo.config import PPOConfig
from ntl_jax.ppo.lr_schedule import per_update_schedule, schedule_settings
from ntl_jax.ppo.steps import make_optimizer, tree_shardings

log = logging.getLogger(__name__)

DTYPES = decoder.DTYPES


def optimizer_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings of ``tx.init(params)``: a leaf whose tree path ends with a parameter's path (Adam's mu and nu mirror
    the parameter tree) takes that parameter's sharding; the rest (step counters) are replicated.

    XLA's propagation does not do this by itself (the moments are zeros that depend on no sharded input), and
    replicated moments would put the whole optimiser state on every device of an fsdp mesh.
    """
    def key(path: Any) -> tuple[str, ...]:
        return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

    by_path = {key(path): sharding for path, sharding in
               jax.tree_util.tree_flatten_with_path(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding_of(path: Any, leaf: Any) -> NamedSharding:
        names = key(path)
        for start in range(len(names)):
            if names[start:] in by_path:
                return by_path[names[start:]]
        return replicated

    return jax.tree_util.tree_map_with_path(sharding_of, jax.eval_shape(tx.init, params))


@dataclasses.dataclass
class ModuleState:
    """A module as a static graph plus placed arrays, with its optimiser when it is trained."""

    graphdef: nnx.GraphDef
    params: Any
    shardings: Any
    tx: optax.GradientTransformation | None = None
    opt_state: Any = None
    opt_shardings: Any = None

    @classmethod
    def from_module(cls, module: nnx.Module, mesh: Mesh, tx: optax.GradientTransformation | None = None,
                    rules: Any = LOGICAL_AXIS_RULES) -> "ModuleState":
        graphdef, params = nnx.split(module)
        params = shard_state(params, mesh, rules)
        shardings = tree_shardings(params)
        state = cls(graphdef, params, shardings, tx)
        if tx is not None:
            state.opt_shardings = optimizer_shardings(tx, params, shardings, mesh)
            state.opt_state = jax.jit(tx.init, out_shardings=state.opt_shardings)(params)
        return state

    def copy_params(self) -> Any:
        """A second buffer of the parameters (the updates donate the live one)."""
        return jax.tree.map(jnp.copy, self.params)


@dataclasses.dataclass
class PPOModels:
    policy: ModuleState
    reference: Any  # params of the frozen reference policy (same graphdef as policy), or None
    critic: ModuleState | None
    model_config: ModelConfig


def learning_rate_schedule(ppo: PPOConfig, peak_lr: float, total_iterations: int) -> Any:
    """The optax learning rate of one optimiser: ``ppo``'s schedule over ``total_iterations`` (``lr_schedule``)."""
    return per_update_schedule(peak_lr, updates_per_iteration=ppo.updates_per_iteration,
                               total_iterations=total_iterations, **schedule_settings(ppo))


def build_models(policy_path: str, ppo: PPOConfig, mesh: Mesh, *, dtype: str = "float32",
                 param_dtype: str = "float32", remat: bool = False, scan_layers: bool = False,
                 attention: str = "einsum", critic_path: str | None = None, total_iterations: int = 1,
                 seed: int = 0) -> PPOModels:
    """Load the policy from an HF-format folder, the critic (verl: from the policy checkpoint, new value head) and
    the reference (a frozen copy of the initial policy). ``dtype`` is the compute dtype, ``param_dtype`` the storage
    dtype of parameters (and so of the optimiser moments).

    Every parameter goes from the memory-mapped safetensors straight into its mesh sharding: each process reads
    only the slices its devices hold, and no device ever holds a whole model it does not shard. ``seed`` is kept
    for callers; the value head is initialised deterministically (normal 0.02, as HF).
    """
    del seed
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in DTYPES:
            raise ValueError(f"{name}={value!r} is invalid; allowed: {', '.join(DTYPES)}")
    load = dict(dtype=DTYPES[dtype], param_dtype=DTYPES[param_dtype], remat=remat, scan_layers=scan_layers,
                attention=attention, mesh=mesh, rules=LOGICAL_AXIS_RULES)
    policy_module = from_pretrained(policy_path, **load)
    model_config = policy_module.config
    actor_tx = make_optimizer(learning_rate_schedule(ppo, ppo.actor_lr, total_iterations),
                              weight_decay=ppo.weight_decay, grad_clip=ppo.grad_clip)
    critic = None
    if ppo.uses_critic:
        critic_module = from_pretrained(critic_path or policy_path, value_model=True, **load)
        critic_tx = make_optimizer(learning_rate_schedule(ppo, ppo.critic_lr, total_iterations),
                                   weight_decay=ppo.weight_decay, grad_clip=ppo.grad_clip)
        critic = ModuleState.from_module(critic_module, mesh, critic_tx)
    policy = ModuleState.from_module(policy_module, mesh, actor_tx)
    reference = policy.copy_params() if ppo.uses_reference else None
    return PPOModels(policy=policy, reference=reference, critic=critic, model_config=model_config)


def train_state_tree(models: PPOModels) -> dict[str, Any]:
    """The arrays a checkpoint holds (the reference is re-derived from its path on resume)."""
    tree = {"actor": models.policy.params, "actor_opt": models.policy.opt_state}
    if models.critic is not None:
        tree["critic"] = models.critic.params
        tree["critic_opt"] = models.critic.opt_state
    return tree


def abstract_train_state(models: PPOModels) -> dict[str, Any]:
    """ShapeDtypeStructs with shardings: the restore target (keeps optax NamedTuples and placements)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        train_state_tree(models))


def load_train_state(models: PPOModels, tree: dict[str, Any]) -> None:
    models.policy.params = tree["actor"]
    models.policy.opt_state = tree["actor_opt"]
    if models.critic is not None:
        models.critic.params = tree["critic"]
        models.critic.opt_state = tree["critic_opt"]

