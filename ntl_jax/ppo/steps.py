"""The jitted hot steps of one PPO iteration, as plain ``jax.jit`` over ``(graphdef, state)``.

Each factory closes over the static parts (graphdef, optimiser, config) and returns a compiled function whose
arguments are pytrees of arrays with explicit shardings on the mesh:

- ``make_logprob_step``: one forward of a policy over prompt+response -> per-token log-prob, entropy and the
  digit logit slice (the NTL pass; also used for the frozen reference without the digit slice).
- ``make_value_step``: critic values for the response tokens.
- ``make_actor_update`` / ``make_critic_update``: one optimiser step on a mini-batch, with gradient
  accumulation over micro-batches (``lax.scan``), global-norm clipping, and non-finite updates skipped.
  Every loss is aggregated over the whole mini-batch (verl's global batch info), so the accumulated gradient
  equals the full-batch gradient for any micro-batch split and device count.
  In NTL mode the actor loss adds ``ntl_weight * NTL(digit_logits[target positions])`` computed from the
  *same* forward's digit slice, so NTL costs one [B, T, 10] gather, not a second forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ntl_jax.models.logprobs import TokenLogProbs, scoring_hidden, sequence_logprobs
from ntl_jax.models.sharding import sharded_activations
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ntl.losses import effective_weights, ntl_per_position
from ntl_jax.ppo.advantages import compute_advantages, scores_to_token_rewards
from ntl_jax.ppo.config import PPOConfig
from ntl_jax.ppo.kl_control import apply_kl_in_reward
from ntl_jax.ppo.losses import LossNormalizer, agg_loss, kl_penalty, policy_loss, token_mean, value_loss

BATCH_AXES = ("data", "fsdp")


@flax.struct.dataclass
class RolloutBatch:
    """Everything the updates need about a set of responses (leading axis N = responses)."""

    prompt_ids: jax.Array  # [N, P] int32, left-padded
    prompt_mask: jax.Array  # [N, P] int32
    response_ids: jax.Array  # [N, T] int32, right-padded
    response_mask: jax.Array  # [N, T] float32
    old_logprobs: jax.Array  # [N, T]
    ref_logprobs: jax.Array  # [N, T]
    old_values: jax.Array  # [N, T]
    advantages: jax.Array  # [N, T]
    returns: jax.Array  # [N, T]
    ntl: DigitTargets  # the iteration's NTL targets, as built on the host (no targets: DigitTargets.empty)

    @property
    def size(self) -> int:
        return int(self.prompt_ids.shape[0])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading (response) axis over the data-parallel mesh axes; replicate the rest."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def tree_shardings(tree: Any) -> Any:
    """The shardings a placed pytree already has (used as the explicit in/out shardings of later steps)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def response_values(critic: nnx.Module, prompt_ids, prompt_mask, response_ids, response_mask, *,
                    group_size: int = 1) -> jax.Array:
    """Critic value of the state before each response token: slot ``P - 1 + t`` (verl's ``values[:, -T-1:-1]``);
    ``group_size`` as in :func:`scoring_hidden`."""
    hidden = scoring_hidden(critic.model, prompt_ids, prompt_mask, response_ids, response_mask, group_size=group_size)
    return critic.score(hidden)


def make_logprob_step(graphdef: nnx.GraphDef, mesh: Mesh, state_shardings: Any, *, digit_ids: jax.Array | None,
                      chunk_size: int, temperature: float, compute_entropy: bool = True,
                      group_size: int = 1) -> Callable[..., TokenLogProbs]:
    """``(state, prompt_ids, prompt_mask, response_ids, response_mask) -> TokenLogProbs`` (jitted).

    Log-probs and entropy are of ``logits / temperature``, the rollout temperature (verl), so old, current and
    reference log-probs all describe the distribution the responses were sampled from. ``group_size`` > 1: runs of
    that many rows share their prompt, which runs once (:func:`scoring_hidden`).
    """
    data = batch_sharding(mesh)

    def step(state, prompt_ids, prompt_mask, response_ids, response_mask):
        model = nnx.merge(graphdef, state)
        return sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, digit_ids=digit_ids,
                                 chunk_size=chunk_size, compute_entropy=compute_entropy, temperature=temperature,
                                 group_size=group_size)

    out = TokenLogProbs(logprobs=data, entropy=data if compute_entropy else None,
                        digit_logits=data if digit_ids is not None else None)
    return jax.jit(sharded_activations(mesh, step), in_shardings=(state_shardings, data, data, data, data),
                   out_shardings=out)


def make_value_step(graphdef: nnx.GraphDef, mesh: Mesh, state_shardings: Any, *,
                    group_size: int = 1) -> Callable[..., jax.Array]:
    """``(critic_state, prompt_ids, prompt_mask, response_ids, response_mask) -> values [N, T]`` (jitted)."""
    data = batch_sharding(mesh)

    def step(state, prompt_ids, prompt_mask, response_ids, response_mask):
        return response_values(nnx.merge(graphdef, state), prompt_ids, prompt_mask, response_ids, response_mask,
                               group_size=group_size)

    return jax.jit(sharded_activations(mesh, step), in_shardings=(state_shardings, data, data, data, data),
                   out_shardings=data)


def make_advantage_step(cfg: PPOConfig, mesh: Mesh) -> Callable[..., tuple[jax.Array, ...]]:
    """``(scores [N], response_mask, old_logprobs, ref_logprobs, values, kl_coef) -> (token_rewards, advantages,
    returns, kl_mean)`` (jitted): scores at the last response token, minus ``kl_coef * KL`` per token when
    ``use_kl_in_reward`` (``kl_mean`` is then verl's current_kl, else 0), then ``cfg.adv_estimator``. Responses
    ``i * rollout_n .. (i + 1) * rollout_n - 1`` answer prompt ``i`` (the sampler's row order)."""
    data, rep = batch_sharding(mesh), replicated(mesh)
    group_ids = np.repeat(np.arange(cfg.train_batch_size, dtype=np.int32), cfg.rollout_n)

    def step(scores, response_mask, old_logprobs, ref_logprobs, values, kl_coef):
        token_rewards = scores_to_token_rewards(scores, response_mask)
        kl_mean = jnp.zeros((), jnp.float32)
        if cfg.use_kl_in_reward:
            token_rewards, kl_mean = apply_kl_in_reward(token_rewards, old_logprobs, ref_logprobs, response_mask,
                                                        kl_coef, cfg.kl_penalty)
        advantages, returns = compute_advantages(
            cfg.adv_estimator, token_rewards=token_rewards, values=values, response_mask=response_mask,
            group_ids=jnp.asarray(group_ids), num_groups=cfg.train_batch_size, gamma=cfg.gamma, lam=cfg.lam,
            norm_by_std=cfg.norm_adv_by_std_in_grpo)
        return token_rewards, advantages, returns, kl_mean

    return jax.jit(step, in_shardings=(data, data, data, data, data, rep), out_shardings=(data, data, data, rep))


def make_optimizer(learning_rate: float | optax.Schedule, *, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
    """AdamW behind global-norm clipping (verl's actor/critic optimiser); ``learning_rate`` a float or an optax
    schedule over optimiser updates (``lr_schedule.per_update_schedule``)."""
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(learning_rate, b1=0.9, b2=0.999, weight_decay=weight_decay))


@dataclasses.dataclass(frozen=True)
class ActorLossSettings:
    """Static settings of the actor loss (hashable; part of the jit cache key through the closure)."""

    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_c: float
    loss_agg_mode: str
    entropy_coeff: float
    use_kl_loss: bool
    kl_loss_coef: float
    kl_loss_type: str
    ntl_method: str | None  # None = standard PPO (no digit slice, no NTL term)
    chunk_size: int
    temperature: float = 1.0  # rollout temperature: log-probs, entropy and KL are of logits / temperature (verl)
    on_policy: bool = False  # old log-probs = stop_gradient(this forward's); batch.old_logprobs is not read
    group_size: int = 1  # runs of this many micro-batch rows share one prompt, run once (scoring_hidden)

    @classmethod
    def from_config(cls, cfg: PPOConfig, ntl_method: str | None, on_policy: bool = False,
                    group_size: int = 1) -> "ActorLossSettings":
        return cls(cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.loss_agg_mode, cfg.entropy_coeff,
                   cfg.use_kl_loss, cfg.kl_loss_coef, cfg.kl_loss_type, ntl_method, cfg.logprob_chunk_size,
                   cfg.temperature, on_policy, group_size)


def ntl_token_losses(digit_logits: jax.Array, batch: RolloutBatch, method: str) -> jax.Array:
    """Per-token NTL matrix [N, T]: ``w_t * NTL_t`` at digit-target positions (w = hybrid weight), 0 elsewhere."""
    targets = batch.ntl
    weights = effective_weights(targets.target_digits, targets.weights * batch.response_mask)
    return ntl_per_position(digit_logits, targets.target_digits, weights, method, targets.layout) * weights


def actor_loss(model: nnx.Module, batch: RolloutBatch, ntl_weight: jax.Array, settings: ActorLossSettings,
               digit_ids: jax.Array | None, normalizer: LossNormalizer | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``L = pg_loss - entropy_coeff * H + kl_loss_coef * KL(pi || ref) + ntl_weight * NTL``.

    Every term is aggregated over response tokens with ``loss_agg_mode`` and the mini-batch ``normalizer``
    (default: this batch's own counts). NTL (when ``settings.ntl_method`` is set) is the per-token matrix of
    :func:`ntl_token_losses` on ``digit_logits = logits[..., digit_ids]`` of this same forward, aggregated like the
    policy-gradient loss: with token-mean, ``NTL = sum_digit_positions w * ntl / N_tokens``, so ``ntl_weight = 1``
    gives an NTL of 1 at one digit position the pull of a policy-gradient loss of 1 at one token, whatever the
    response length, the micro-batch split or the device count.
    """
    use_ntl = settings.ntl_method is not None
    out = sequence_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                            digit_ids=digit_ids if use_ntl else None, chunk_size=settings.chunk_size,
                            compute_entropy=True, temperature=settings.temperature, group_size=settings.group_size)
    mask = batch.response_mask

    def agg(loss_mat: jax.Array) -> jax.Array:
        return agg_loss(loss_mat, mask, settings.loss_agg_mode, normalizer=normalizer)

    # On policy (one update per rollout) the sampling policy's log-probs are this forward's, as constants (verl).
    old_logprobs = jax.lax.stop_gradient(out.logprobs) if settings.on_policy else batch.old_logprobs
    pg_loss, pg_metrics = policy_loss(out.logprobs, old_logprobs, batch.advantages, mask,
                                      clip_ratio_low=settings.clip_ratio_low, clip_ratio_high=settings.clip_ratio_high,
                                      clip_ratio_c=settings.clip_ratio_c, loss_agg_mode=settings.loss_agg_mode,
                                      normalizer=normalizer)
    entropy = agg(out.entropy)
    loss = pg_loss - settings.entropy_coeff * entropy
    metrics = {"actor/pg_loss": pg_loss, "actor/entropy": entropy, **{f"actor/{k}": v for k, v in pg_metrics.items()}}
    if settings.use_kl_loss:
        kl = agg(kl_penalty(out.logprobs, batch.ref_logprobs, settings.kl_loss_type))
        loss = loss + settings.kl_loss_coef * kl
        metrics["actor/kl_loss"] = kl
    if use_ntl:
        ntl = agg(ntl_token_losses(out.digit_logits, batch, settings.ntl_method))
        loss = loss + ntl_weight * ntl
        metrics["ntl/train_loss"] = ntl
    return loss, metrics


def critic_loss(model: nnx.Module, batch: RolloutBatch, cliprange_value: float, loss_agg_mode: str,
                normalizer: LossNormalizer | None = None, group_size: int = 1
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value loss ``0.5 * agg(max((V - R)^2, (clip(V, V_old +- c) - R)^2))``."""
    values = response_values(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                             group_size=group_size)
    loss, vf_metrics = value_loss(values, batch.old_values, batch.returns, batch.response_mask,
                                  cliprange_value=cliprange_value, loss_agg_mode=loss_agg_mode, normalizer=normalizer)
    metrics = {"critic/vf_loss": loss, "critic/vpred_mean": token_mean(values, batch.response_mask, normalizer),
               **{f"critic/{k}": v for k, v in vf_metrics.items()}}
    return loss, metrics


def _split_micro(batch: RolloutBatch, num_micro: int) -> RolloutBatch:
    """[N, ...] -> [num_micro, N / num_micro, ...], micro-batch m holding rows m, m + num_micro, m + 2 num_micro, ...

    Strided rather than contiguous: rows are sharded over the data-parallel devices in contiguous blocks, so every
    micro-batch keeps rows on every device (a contiguous split would leave most devices idle in each micro-step).
    """
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1), batch)


def make_update_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: Callable[..., Any],
                     *, num_micro_batches: int, mesh: Mesh, param_shardings: Any, opt_shardings: Any,
                     metric_prefix: str) -> Callable[..., Any]:
    """One optimiser step on a mini-batch, accumulating gradients over ``num_micro_batches`` (``lax.scan``).

    ``loss_fn(model, micro_batch, normalizer, *extra) -> (loss, metrics)`` returns the micro-batch's share of the
    mini-batch loss (:class:`LossNormalizer` carries the mini-batch's token and row counts), so the summed
    gradient *is* the full-batch gradient, whatever the split; metrics are shares too and are summed.
    A step whose loss or gradient norm is not finite leaves params and optimiser state unchanged and reports
    ``<prefix>/update_skipped = 1``. Params and optimiser state are donated.
    """
    data = batch_sharding(mesh)
    rep = replicated(mesh)

    def step(params, opt_state, batch: RolloutBatch, *extra):
        chex.assert_equal(batch.size % num_micro_batches, 0)
        normalizer = LossNormalizer.of(batch.response_mask)
        micro = _split_micro(batch, num_micro_batches)

        def micro_grad(carry, micro_batch):
            def loss_of(p):
                return loss_fn(nnx.merge(graphdef, p), micro_batch, normalizer, *extra)

            (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
            # Gradients stay sharded like their parameters (reduce-scattered, not gathered whole on every device).
            grad_sum = jax.lax.with_sharding_constraint(jax.tree.map(jnp.add, carry, grads), param_shardings)
            return grad_sum, (loss, metrics)

        zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_shardings)
        grads, (losses, metrics) = jax.lax.scan(micro_grad, zeros, micro)
        grad_norm = optax.tree.norm(grads)
        loss = jnp.sum(losses)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_params = jax.tree.map(keep, new_params, params)
        new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        out_metrics = {k: jnp.sum(v) for k, v in metrics.items()}
        out_metrics[f"{metric_prefix}/grad_norm"] = grad_norm
        out_metrics[f"{metric_prefix}/loss"] = loss
        out_metrics[f"{metric_prefix}/update_skipped"] = 1.0 - finite.astype(jnp.float32)
        return new_params, new_opt_state, out_metrics

    def jitted(num_extra: int):  # ``data`` is a prefix: every leaf of the batch is sharded on its leading axis
        return jax.jit(sharded_activations(mesh, step),
                       in_shardings=(param_shardings, opt_shardings, data) + (rep,) * num_extra,
                       out_shardings=(param_shardings, opt_shardings, rep), donate_argnums=(0, 1))

    return jitted


def make_actor_update(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, settings: ActorLossSettings, *,
                      digit_ids: jax.Array | None, num_micro_batches: int, mesh: Mesh, param_shardings: Any,
                      opt_shardings: Any) -> Callable[..., Any]:
    """``(params, opt_state, batch, ntl_weight) -> (params, opt_state, metrics)`` (jitted, donating)."""
    def loss_fn(model, micro_batch, normalizer, ntl_weight):
        return actor_loss(model, micro_batch, ntl_weight, settings, digit_ids, normalizer)

    return make_update_step(graphdef, tx, loss_fn, num_micro_batches=num_micro_batches, mesh=mesh,
                            param_shardings=param_shardings, opt_shardings=opt_shardings,
                            metric_prefix="actor")(1)


def make_critic_update(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: PPOConfig, *,
                       num_micro_batches: int, mesh: Mesh, param_shardings: Any,
                       opt_shardings: Any, group_size: int = 1) -> Callable[..., Any]:
    """``(params, opt_state, batch) -> (params, opt_state, metrics)`` (jitted, donating); ``group_size`` as in
    :class:`ActorLossSettings`."""
    def loss_fn(model, micro_batch, normalizer):
        return critic_loss(model, micro_batch, cfg.cliprange_value, cfg.loss_agg_mode, normalizer, group_size)

    return make_update_step(graphdef, tx, loss_fn, num_micro_batches=num_micro_batches, mesh=mesh,
                            param_shardings=param_shardings, opt_shardings=opt_shardings,
                            metric_prefix="critic")(0)
