"""What the stages read from a run's config and exchange on disk: library configs, problems, policies.

`cfg` is the ml-collections ConfigDict of `configs/*.py`; this module maps it onto the frozen
dataclasses of the libraries and picks the task's problems, so the stages (`pipeline.py`), the
preflight and the evaluate command line read the same ones. Policies are exchanged as HF
directories (`hf.save_hf` + the tokenizer files), so a trained policy is loadable by transformers and
by `python -m drift_jax.evaluate`.
"""

from __future__ import annotations

import contextlib

import ml_collections

from drift_jax import envs
from drift_jax.lm import hf, model
from drift_jax.rollout import engine, episodes, returns
from drift_jax.runtime import files, hosts
from drift_jax.train import update

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


# ----------------------------------------------------------------------------- config mapping


def episode_config(cfg: ml_collections.ConfigDict, *, sample: bool) -> episodes.EpisodeConfig:
    r = cfg.rollout
    return episodes.EpisodeConfig(
        max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens, feedback=cfg.feedback,
        temperature=r.temperature if sample else 0.0, top_k=r.top_k if sample else 0,
        top_p=r.top_p if sample else 1.0,
    )


def engine_config(section: ml_collections.ConfigDict) -> engine.EngineConfig:
    """The rollout engine's shapes from a rollout or eval section (its rows are `rows_per_batch`)."""
    knobs = dict(section.get("engine") or {})
    if "prompt_buckets" in knobs:
        knobs["prompt_buckets"] = tuple(knobs["prompt_buckets"])
    return engine.EngineConfig(rows=section.rows_per_batch, **knobs)


def train_config(section: ml_collections.ConfigDict, seed: int) -> update.TrainConfig:
    return update.TrainConfig(**{**section.to_dict(), "seed": seed, "async_checkpoints": False})


def method_train(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The trainer section of offline method `name`: cfg.train with its epochs from `cfg.budgets[name]`,
    the budget chosen for that method on the dev split (launch/tune.py); 0 or absent: train.epochs."""
    section = ml_collections.ConfigDict(cfg.train.to_dict())
    epochs = (cfg.get("budgets") or {}).get(name, 0)
    if epochs:
        section.epochs = int(epochs)
    return section


def return_config(cfg) -> returns.ReturnConfig:
    return returns.ReturnConfig(**cfg.returns.to_dict())


def problems(cfg: ml_collections.ConfigDict, split: str, n: int, seed_offset: int = 0,
             task: ml_collections.ConfigDict | None = None) -> list[envs.Problem]:
    """`n` problems (0: all) of `split` from the task section `task` (default: cfg.task)."""
    t = task or cfg.task
    if t.name == "synthetic":
        knobs = t.knobs.to_dict()
        knobs["modulus"] = knobs.get("modulus") or None  # 0 in a config: no modulus
        return envs.synthetic.make_problems(split, n, seed=cfg.seed + seed_offset, **knobs)
    found = envs.load_problems(t.name, split, t.data_dir, manual_dir=t.manual_dir)
    return found[:n] if n else found


def eval_problems(cfg) -> list[envs.Problem]:
    return problems(cfg, cfg.eval.split, cfg.eval.num_problems, task=cfg.eval.task if cfg.eval.task.name else None)


def curve_problems(cfg) -> list[envs.Problem]:
    """Online RL's learning-curve problems: the dev split of the evaluation task (as many as eval.num_problems)."""
    return problems(cfg, "dev", cfg.eval.num_problems, task=cfg.eval.task if cfg.eval.task.name else None)


# ----------------------------------------------------------------------------- policies on disk


def save_policy(model_config: model.ModelConfig, params: model.Params, tokenizer_dir: str, out: str) -> None:
    """Collective: every process calls it, process 0 writes (`hf.save_hf`)."""
    hf.save_hf(model_config, params, out)
    with shared_write(f"tokenizer:{out}") as writer:
        for name in _TOKENIZER_FILES:
            if writer and files.exists(files.join(tokenizer_dir, name)):
                files.path(files.join(tokenizer_dir, name)).copy(files.path(files.join(out, name)), overwrite=True)


@contextlib.contextmanager
def shared_write(name: str):
    """A file every process would write alike: process 0 writes it (the block gets True), and no process
    goes on before it is written."""
    try:
        yield hosts.is_writer()
    finally:
        hosts.barrier(f"shared_write:{name}")


def load_policy(path: str, mesh, cfg: ml_collections.ConfigDict):
    """(model config, params, chat format) of an HF directory; params in cfg.model.param_dtype (default:
    the checkpoint's), compute in cfg.model.compute_dtype (default: the param dtype), remat per config."""
    model_config, params = hf.load_hf(path, mesh=mesh, dtype=cfg.model.param_dtype or None)
    model_config = model_config.replace(dtype=cfg.model.compute_dtype or model_config.dtype, remat=cfg.model.remat)
    return model_config, params, chat_format(path)


def chat_format(path: str) -> envs.ChatFormat:
    """The chat format of an HF directory's tokenizer (tokenizers read local files: a remote one is copied)."""
    return envs.ChatFormat.from_pretrained(files.local_input(path))
