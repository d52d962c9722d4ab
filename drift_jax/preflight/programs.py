"""The programs each stage of a run compiles, at the run's shapes, as (jitted function, abstract inputs).

The functions are the libraries' own (the rollout engine's prefill and decode chunk, the trainer's step),
jitted as the stages jit them, so what compiles here is what the run compiles. Inputs are
ShapeDtypeStructs carrying their shardings: no weights are read and nothing is allocated.
Shapes the config does not fix (the longest prompt, the feedback message) are `Shapes`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from drift_jax.lm import decode_state, model, presets, sampling, sharding
from drift_jax.lm.model import ModelConfig
from drift_jax.lm.sample import Sampling
from drift_jax.rollout import engine as engine_lib
from drift_jax.train import batches, update

# The batch as Batcher.make_row fills it.
_BATCH_DTYPES = {"tokens": jnp.int32, "targets": jnp.int32, "token_weight": jnp.float32, "scored": jnp.bool_,
                 "positions": jnp.int32, "segment_ids": jnp.int32, "row_weight": jnp.float32}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the config leaves to the data: the longest prompt (it must fit the engine's largest prompt
    bucket) and the feedback message, in tokens; the tokenizer's stop and pad ids."""

    prompt_tokens: int = 512
    feedback_tokens: int = 16
    stop_tokens: tuple[int, ...] = (0,)
    pad_id: int = 0


@dataclasses.dataclass
class Program:
    """One compiled program of a stage. A step is one call, or (decode) one trip of its loop."""

    stage: str
    fn: Any  # a jax.jit-wrapped function
    args: tuple
    kwargs: dict
    model_config: ModelConfig
    tokens_per_step: int  # global: rows x new tokens
    knobs: tuple[str, ...]  # config fields that shrink its memory
    per_loop_trip: bool = False  # decode: a step is one trip of the program's loop (one token per row)
    model_flops_per_step: float = 0.0  # train: 6N + causal attention per token (update.flops_per_token) x tokens
    resident: Any = None  # abstract arrays the stage holds on the chips besides the program's own


def abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def model_configs(cfg: ml_collections.ConfigDict) -> tuple[ModelConfig, ModelConfig | None]:
    """(the policy every stage after the reference runs, the scratch reference's if one is trained)."""
    m = cfg.model
    if m.get("preset", "") or m.hf_path:
        policy = presets.from_config(m.get("preset", ""), m.hf_path, m.param_dtype, m.compute_dtype, m.remat)
        return policy, None
    from drift_jax import envs

    vocab = envs.ChatFormat.from_pretrained(m.tokenizer_path or envs.SYNTHETIC_TOKENIZER).tokenizer.get_vocab_size()
    s = m.scratch
    # As pipeline.stage_reference builds it, and stage_io.load_policy then reloads it.
    reference = ModelConfig(
        vocab_size=vocab, hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads, head_dim=s.hidden_size // s.num_heads, mlp_dim=s.mlp_dim, qkv_bias=True,
        tie_embeddings=False, architecture="qwen2", max_position_embeddings=1024,
    )
    param_dtype = m.param_dtype or reference.param_dtype
    policy = reference.replace(param_dtype=param_dtype, dtype=m.compute_dtype or param_dtype, remat=m.remat)
    return policy, reference


# ----------------------------------------------------------------------------- rollouts and evaluation


def _struct(mesh: Mesh, shape: tuple[int, ...], dtype, names) -> jax.ShapeDtypeStruct:
    with sharding.use_rules(decode_state.RULES):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.named_sharding(mesh, names, shape))


def rollout_params(config: ModelConfig, mesh: Mesh) -> Any:
    """Params as `decode_state.rollout_params` lays them out: compute dtype, the sampler's table."""
    shapes = jax.eval_shape(functools.partial(model.init_params, config), jax.random.key(0))
    dt = jnp.dtype(config.dtype)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating)
                                                         else x.dtype), shapes)
    with sharding.use_rules(decode_state.RULES):
        return abstract(shapes, sharding.tree_shardings(mesh, model.param_logical_axes(config), shapes))


def episode_programs(cfg, config: ModelConfig, mesh: Mesh, shapes: Shapes, engine: engine_lib.EngineConfig, *,
                     stage: str, group_size: int, rule: Sampling, rows_knob: str, resident: Any = None) -> list[Program]:
    """The rollout engine's two programs at the shapes `engine.run` fixes: the shared-prompt prefill
    (`sampling.refill`, at the prompt bucket of the longest prompt) and the decode chunk
    (`sampling.decode_chunk`; a step is one trip of its loop: a token for every row, forced feedback
    tokens included)."""
    rows = sampling.round_up(engine.rows, mesh.shape["data"] * mesh.shape["fsdp"])
    buckets = sorted(engine.prompt_buckets)
    if shapes.prompt_tokens > buckets[-1]:  # engine.run would stop at the first such prompt
        raise ValueError(f"{stage}: a prompt of {shapes.prompt_tokens} tokens exceeds the rollout engine's largest "
                         f"prompt bucket ({buckets[-1]}); add a bucket ({rows_knob.rsplit('.', 1)[0]}.engine.prompt_buckets)")
    bucket = next(b for b in buckets if b >= shapes.prompt_tokens)
    forced = shapes.feedback_tokens + 1  # the end-of-turn token, then the feedback
    length = engine_lib.cache_length(engine, cfg.max_turns, cfg.max_new_tokens, forced, bucket)
    params = rollout_params(config, mesh)
    with sharding.use_rules(decode_state.RULES):
        state = abstract(jax.eval_shape(lambda: decode_state._empty_state(config, rows, length)),
                         decode_state._state_shardings(mesh, config, rows, length))
    knobs = (rows_knob, "max_new_tokens", "max_turns", "mesh")
    p, k = engine.prefill_rows, min(group_size, rows)
    refill = Program(f"{stage}_prefill", sampling._refill_fn(config, mesh, rows, length), (params,), {
        "state": state, "tokens_PxT": _struct(mesh, (p, bucket), jnp.int32, (None, None)),
        "lengths_P": _struct(mesh, (p,), jnp.int32, (None,)), "dst_PxK": _struct(mesh, (p, k), jnp.int32, (None, None)),
    }, config, p * bucket, knobs, resident=resident)
    plan = sampling.Plan(rule, (0,) * forced, engine.chunk_steps)
    turns = cfg.max_turns
    batch = lambda *shape, dtype=jnp.int32: _struct(mesh, (rows, *shape), dtype, ("batch",) + (None,) * len(shape))
    row_state = sampling.Rows(key_Bx2=batch(2, dtype=jnp.uint32), turn_B=batch(), last_turn_B=batch(), index_B=batch(),
                              forced_B=batch(), active_B=batch(dtype=jnp.bool_), budget_BxU=batch(turns))
    decode = Program(f"{stage}_decode", sampling._decode_fn(config, mesh, rows, length, turns, plan), (params,),
                     {"state": state, "rows": row_state}, config, rows, knobs, per_loop_trip=True,
                     resident=resident)
    return [refill, decode]


# ----------------------------------------------------------------------------- training


def train_state(section: ml_collections.ConfigDict, config: ModelConfig, mesh: Mesh) -> tuple[update.TrainConfig, Any]:
    """(the section's TrainConfig, its abstract train state laid out as the trainer lays it out)."""
    tc = update.TrainConfig(**{**section.to_dict(), "async_checkpoints": False})
    tx = update.make_optimizer(tc, total_steps=1000)
    return tc, update.abstract_state(config, tx, update.state_shardings(mesh, config, tx))


def train_program(section: ml_collections.ConfigDict, config: ModelConfig, mesh: Mesh, *, stage: str,
                  knob_prefix: str, resident: Any = None) -> Program:
    """The weighted-SFT step of a train section (the trainer's own jit: shardings, donation)."""
    tc = update.TrainConfig(**{**section.to_dict(), "async_checkpoints": False})
    tx = update.make_optimizer(tc, total_steps=1000)
    state_sh = update.state_shardings(mesh, config, tx)
    shapes = batches.batch_shapes(tc.batch_config())
    batch_sh = update.batch_shardings(mesh, shapes, knob=f"{knob_prefix}.batch_size / {knob_prefix}.micro_batches")
    batch = {k: jax.ShapeDtypeStruct(shapes[k], _BATCH_DTYPES[k], sharding=batch_sh[k]) for k in shapes}
    fn = update.compile_train_step(config, tx, mesh, state_sh, batch_sh)
    tokens = tc.batch_size * tc.seq_len
    knobs = (f"{knob_prefix}.micro_batches", "model.remat", f"{knob_prefix}.batch_size", f"{knob_prefix}.seq_len", "mesh")
    return Program(stage, fn, (update.abstract_state(config, tx, state_sh), batch), {}, config, tokens, knobs,
                   model_flops_per_step=update.flops_per_token(config, tc.seq_len) * tokens, resident=resident)


def logprobs_program(section: ml_collections.ConfigDict, config: ModelConfig, mesh: Mesh, *, stage: str,
                     knob_prefix: str, resident: Any = None) -> Program:
    """Online RL's KL term: the reference's log-probs of a training batch (`online_rl._target_logprobs`,
    one forward per micro-batch), the reference held as `stage_io.load_policy` holds it (training table)."""
    from drift_jax.baselines import online_rl

    tc, state = train_state(section, config, mesh)
    shapes = batches.batch_shapes(tc.batch_config())
    batch_sh = update.batch_shardings(mesh, shapes, knob=f"{knob_prefix}.batch_size / {knob_prefix}.micro_batches")
    batch = {k: jax.ShapeDtypeStruct(shapes[k], _BATCH_DTYPES[k], sharding=batch_sh[k]) for k in shapes}
    tokens = tc.batch_size * tc.seq_len
    knobs = (f"{knob_prefix}.micro_batches", f"{knob_prefix}.batch_size", f"{knob_prefix}.seq_len", "mesh")
    return Program(stage, online_rl._target_logprobs, (state.params,), {"model_config": config, "batch": batch},
                   config, tokens, knobs, resident=resident)


# ----------------------------------------------------------------------------- a run


def programs(cfg: ml_collections.ConfigDict, mesh: Mesh, shapes: Shapes) -> list[Program]:
    """Every program the run of `cfg` compiles, in stage order."""
    policy, reference = model_configs(cfg)
    out = []
    if reference is not None:
        out.append(train_program(cfg.reference.train, reference, mesh, stage="reference_train",
                                 knob_prefix="reference.train"))
    from drift_jax import stage_io

    r = cfg.rollout
    sample = Sampling(float(r.temperature), int(r.top_k), float(r.top_p), tuple(shapes.stop_tokens), shapes.pad_id)
    if any(m in cfg.methods for m in ("drift", "sft_rollouts", "rft")):
        out += episode_programs(cfg, policy, mesh, shapes, stage_io.engine_config(r), stage="rollout",
                                group_size=r.num_samples, rule=sample, rows_knob="rollout.rows_per_batch")
    if any(m in cfg.methods for m in ("drift", "sft_rollouts", "rft", "sft")):
        out.append(train_program(cfg.train, policy, mesh, stage="train", knob_prefix="train"))
    if "online_rl" in cfg.methods:
        # online_rl.run holds the train state and the reference's params (for the KL term) through every
        # iteration: the rollouts and the reference's log-probs run beside the state, the step beside the reference.
        o = cfg.online_rl
        _, state = train_state(o.train, policy, mesh)
        rows = o.problems_per_iteration * o.samples_per_problem  # online_rl.run's engine: the defaults
        out += episode_programs(cfg, policy, mesh, shapes, engine_lib.EngineConfig(rows=rows), stage="online_rl_rollout",
                                group_size=o.samples_per_problem, rule=sample,
                                rows_knob="online_rl.problems_per_iteration", resident=(state, state.params))
        out.append(logprobs_program(o.train, policy, mesh, stage="online_rl_logprobs", knob_prefix="online_rl.train",
                                    resident=state))
        out.append(train_program(o.train, policy, mesh, stage="online_rl_train", knob_prefix="online_rl.train",
                                 resident=state.params))
    greedy = dataclasses.replace(sample, temperature=0.0, top_k=0, top_p=1.0)
    out += episode_programs(cfg, policy, mesh, shapes, stage_io.engine_config(cfg.eval), stage="eval", group_size=1,
                            rule=greedy, rows_knob="eval.rows_per_batch")
    return out
