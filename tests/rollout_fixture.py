"""A tiny random policy over the synthetic tokenizer, shared by the rollout and episode tests."""

import jax

from drift_jax import envs
from drift_jax.lm import model
from drift_jax.rollout import driver, episodes

CHAT = envs.ChatFormat.from_pretrained(envs.SYNTHETIC_TOKENIZER)
CFG = model.ModelConfig(
    vocab_size=CHAT.tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, mlp_dim=64,
)


def params(seed: int = 0):
    return model.init_params(CFG, jax.random.key(seed))


def problems(n: int = 6):
    return envs.synthetic.make_problems("train", n, seed=0)


def rollout_config(**kw) -> driver.RolloutConfig:
    base = dict(
        num_samples=3,
        episode=episodes.EpisodeConfig(max_turns=3, max_new_tokens=6, temperature=1.0),
        problems_per_shard=2,
        rows_per_batch=8,
        seed=7,
    )
    return driver.RolloutConfig(**{**base, **kw})
