"""The weighted-SFT step: AdamW and its schedule, the sharded train state, the chunked loss, `train_step`.

The jitted step is pure: `train_step(state, batch) -> (state, metrics)`, compiled once by
`compile_train_step` with shardings from `sharding.RULES` and the state donated. A batch is a dict of
[M micro-batches, R rows, T] arrays (see `batches.py`); gradients of the M micro-batches are summed, each
already divided by the global weight mass, so accumulation and any split across hosts are exact.
`trainer.run` is the loop around it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from drift_jax.lm import model, sharding
from drift_jax.lm.model import ModelConfig, Params
from drift_jax.train import batches


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    lr: float = 5e-6
    warmup_ratio: float = 0.1  # of the total steps; `warmup_steps` overrides it
    warmup_steps: int | None = None
    schedule: Literal["constant", "cosine"] = "constant"
    final_lr_ratio: float = 0.0  # cosine: lr at the last step / peak lr
    weight_decay: float = 0.1  # not applied to norm scales and biases
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    batch_size: int = 128  # rows of seq_len tokens per step (global)
    micro_batches: int = 1
    seq_len: int = 2048
    pack: bool = True
    epochs: int = 1
    max_steps: int | None = None
    loss_reduction: batches.LossReduction = "token_mean"
    seed: int = 0
    save_every: int = 100
    keep: int = 3
    async_checkpoints: bool = True
    peak_flops_per_device: float | None = None  # for the MFU estimate; None: not reported
    progress_bar: bool = True

    def batch_config(self) -> batches.BatchConfig:
        return batches.BatchConfig(
            batch_size=self.batch_size, seq_len=self.seq_len, micro_batches=self.micro_batches,
            pack=self.pack, seed=self.seed, loss_reduction=self.loss_reduction,
        )


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: steps done
    params: Params
    opt_state: optax.OptState


# ----------------------------------------------------------------------------- optimizer


def lr_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)
    warm = optax.linear_schedule(0.0, config.lr, max(warmup, 1))
    if config.schedule == "constant":
        rest = optax.constant_schedule(config.lr)
    elif config.schedule == "cosine":
        rest = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1), alpha=config.final_lr_ratio)
    else:
        raise ValueError(f"schedule must be constant|cosine, got {config.schedule!r}")
    return optax.join_schedules([warm, rest], [warmup]) if warmup else rest


def _decay_mask(params: Params) -> Any:
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name == "scale" or name.endswith("_bias"))

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            lr_schedule(config, total_steps), b1=config.b1, b2=config.b2, eps=config.eps,
            weight_decay=config.weight_decay, mask=_decay_mask,
        ),
    )


# ----------------------------------------------------------------------------- state and step


def init_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_shardings(mesh, model_config: ModelConfig, tx: optax.GradientTransformation) -> TrainState:
    """Shardings of the train state: optimizer moments follow their parameters, the rest replicated."""
    param_axes = model.param_logical_axes(model_config)
    abstract = jax.eval_shape(
        lambda: init_state(model.init_params(model_config, jax.random.key(0)), tx)
    )
    param_sh = sharding.tree_shardings(mesh, param_axes, abstract.params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh)


def abstract_state(model_config: ModelConfig, tx: optax.GradientTransformation, state_sh: TrainState) -> TrainState:
    """The train state's shapes with their target shardings: what a checkpoint restores onto."""
    abstract = jax.eval_shape(lambda: init_state(model.init_params(model_config, jax.random.key(0)), tx))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)


def sharded_state(params: Params, tx: optax.GradientTransformation, state_sh: TrainState) -> TrainState:
    """A fresh train state from params, laid out as `state_sh`."""
    return jax.jit(functools.partial(init_state, tx=tx), out_shardings=state_sh)(params)


def batch_shardings(mesh, shapes: dict[str, tuple[int, ...]],
                    knob: str = "batch_size / micro_batches") -> dict[str, NamedSharding]:
    """Shardings of a [M, R, T] batch; R rows must divide over the data x fsdp devices (`knob` sets R)."""
    sharding.require_divisible_rows(mesh, shapes["row_weight"][1], knob)
    return {k: sharding.named_sharding(mesh, batches.BATCH_AXES[k], shapes[k]) for k in shapes}


# Tokens per chunk of the loss's LM head: float32 logits exist for one [R, LOSS_CHUNK, V] chunk at a
# time, recomputed in the backward pass, never for the whole micro-batch (Qwen2.5-3B at 4 x 4096
# tokens per chip: 10 GB of [R, T, V] float32 logits, and as much again for their gradient).
LOSS_CHUNK = 512


def target_logprobs(params: Params, model_config: ModelConfig, mb: dict[str, jax.Array]) -> jax.Array:
    """log p(target) at every scored position of a packed [R, T] micro-batch, 0 elsewhere: the one
    definition the loss and online RL's KL estimate share (float32, no [R, T, V] log_softmax)."""
    x_BxTxD = model.hidden_states(
        params, model_config, mb["tokens"], positions_BxT=mb["positions"], segment_ids_BxT=mb["segment_ids"]
    )
    head_DxV = model.output_head(params, model_config).astype(x_BxTxD.dtype)
    b, t, d = x_BxTxD.shape
    c = min(t, LOSS_CHUNK)
    pad = -t % c
    n = (t + pad) // c
    x_NxBxCxD = jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
    targets_NxBxC = jnp.pad(mb["targets"], ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)

    @jax.checkpoint  # the backward recomputes a chunk's logits instead of saving them
    def chunk(x_BxCxD, targets_BxC):
        logits_BxCxV = jnp.einsum("BCD,DV->BCV", x_BxCxD, head_DxV, preferred_element_type=jnp.float32)
        logits_BxCxV = sharding.constrain(logits_BxCxV, ("batch", "length", "act_vocab"))
        target_logit_BxC = jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
        return target_logit_BxC - jax.nn.logsumexp(logits_BxCxV, axis=-1)

    logp_NxBxC = jax.lax.map(lambda xs: chunk(*xs), (x_NxBxCxD, targets_NxBxC))
    logp_BxT = logp_NxBxC.swapaxes(0, 1).reshape(b, n * c)[:, :t]
    return jnp.where(mb["scored"], logp_BxT, 0.0)


def weighted_loss(params: Params, model_config: ModelConfig, mb: dict[str, jax.Array], weight_mass: jax.Array):
    """sum over tokens of token_weight * NLL, divided by the GLOBAL weight mass; and metric sums."""
    nll_BxT = -target_logprobs(params, model_config, mb)
    loss = jnp.sum(mb["token_weight"] * nll_BxT) / weight_mass
    return loss, {"nll_sum": jnp.sum(nll_BxT)}


def train_step(
    state: TrainState, batch: dict[str, jax.Array], *, model_config: ModelConfig, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    weight_mass = jnp.sum(batch["row_weight"])
    # An all-zero-weight batch gives zero loss and zero gradients rather than 0/0.
    denom = jnp.where(weight_mass > 0, weight_mass, 1.0)
    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

    def micro_step(carry, mb):
        grads, loss, nll_sum = carry
        (l, aux), g = grad_fn(state.params, model_config, mb, denom)
        return (jax.tree.map(jnp.add, grads, g), loss + l, nll_sum + aux["nll_sum"]), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    carry = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if batch["tokens"].shape[0] == 1:
        carry, _ = micro_step(carry, jax.tree.map(lambda x: x[0], batch))
    else:
        carry, _ = jax.lax.scan(micro_step, carry, batch)
    grads, loss, nll_sum = carry

    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    scored = jnp.sum(batch["scored"])
    metrics = {
        "loss": loss,
        "weight_mass": weight_mass,
        "grad_norm": grad_norm,
        "nll": nll_sum / jnp.maximum(scored, 1),
        "tokens": jnp.sum(batch["segment_ids"] > 0),
        "scored_tokens": scored,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_train_step(
    model_config: ModelConfig, tx: optax.GradientTransformation, mesh, state_sh: TrainState,
    batch_sh: dict[str, NamedSharding],
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """train_step jitted once: explicit in/out shardings, the state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        functools.partial(train_step, model_config=model_config, tx=tx),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )


def flops_per_token(model_config: ModelConfig, seq_len: int) -> float:
    """Training model FLOPs per token: 6 * matmul params + 6 * L * N * H * T for causal attention.

    PaLM (appendix B) counts attention as 12 * L * N * H * T, every query against every key; causal
    attention needs half of it, and `attention.causal_blocks` skips the masked triangle, so with the full
    count the model FLOPs exceeded what the compiled step computes and MFU could read over 100% (the
    flash-attention benchmarks' convention halves it too)."""
    c = model_config
    # The input embedding is a lookup, not a matmul (unless tied to the output head).
    matmul_params = c.num_params - (0 if c.tie_embeddings else c.vocab_size * c.hidden_size)
    return 6.0 * matmul_params + 6.0 * c.num_layers * c.num_heads * c.head_dim * seq_len
