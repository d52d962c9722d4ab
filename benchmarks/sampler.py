"""Sampler benchmark: decode tokens/s vs transformers generate and vs the matmul ceiling; extend vs re-prefill.

Run: `.venv/bin/python benchmarks/sampler.py` (CPU; prints one JSON line). Model: random Qwen2, 4 layers,
hidden 256, 8 heads, 2 KV heads, mlp 1024, vocab 512, f32, the same weights in both frameworks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from drift_jax import hf, sampling  # noqa: E402

BATCH, PROMPT, NEW = 32, 32, 64
TURNS, FEEDBACK = 4, 16
REPEATS = 3


def _best(fn, repeats=REPEATS):
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _hf_model(path):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
    )
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.float32).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def bench_transformers(model, prompts) -> float:
    ids = torch.as_tensor(prompts, dtype=torch.long)

    def run():
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                do_sample=False, pad_token_id=0, eos_token_id=None,
            )
        assert out.shape[1] == PROMPT + NEW

    return BATCH * NEW / _best(run)


def bench_ours(params, config, prompts) -> float:
    key = jax.random.key(0)

    def run():
        gen = sampling.generate(params, config, prompts, max_new_tokens=NEW, key=key)  # no stop tokens
        assert all(len(t) == NEW for t in gen.tokens)

    return BATCH * NEW / _best(run)


def bench_ceiling(params, config) -> float:
    """Tokens/s of the model's matmuls alone (one token per row, batch 32, NEW steps in a while_loop)."""
    layers = params["layers"]
    w = [layers["attn"][n].reshape(config.num_layers, config.hidden_size, -1) for n in ("q", "k", "v")]
    wo = layers["attn"]["o"].reshape(config.num_layers, -1, config.hidden_size)
    mlp = layers["mlp"]
    head = params["lm_head"]

    @jax.jit
    def run(x_BxD):
        def step(_, x):
            for l in range(config.num_layers):
                q, k, v = (x @ wi[l] for wi in w)
                x = x + (q @ wo[l]) + 1e-3 * (k.sum() + v.sum())
                x = x + (x @ mlp["gate"][l]) * (x @ mlp["up"][l]) @ mlp["down"][l]
            logits = x @ head
            return x + 1e-3 * logits[:, : config.hidden_size]
        return jax.lax.fori_loop(0, NEW, step, x_BxD)

    x = jnp.ones((BATCH, config.hidden_size), jnp.float32) * 1e-3
    return BATCH * NEW / _best(lambda: run(x).block_until_ready())


def bench_turns(params, config, prompts) -> tuple[float, float]:
    """Seconds to make the cache ready for turn 5: extend by a feedback message vs re-prefill all."""
    rng = np.random.RandomState(1)
    history = np.concatenate(
        [np.asarray(prompts)] + [rng.randint(1, 512, (BATCH, NEW + FEEDBACK)) for _ in range(TURNS)], 1
    )[:, : PROMPT + TURNS * NEW + (TURNS - 1) * FEEDBACK]
    feedback = rng.randint(1, 512, (BATCH, FEEDBACK))
    total = history.shape[1] + FEEDBACK
    max_length = total + NEW + 16
    lengths = np.full((BATCH,), history.shape[1], np.int32)
    base, _ = sampling.prefill(params, config, history, lengths, max_length=max_length)
    jax.block_until_ready(base)

    def run_extend():
        state = jax.tree.map(lambda x: x.copy(), base)  # extend donates its state
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        state, _ = sampling.extend(params, config, state, feedback, np.full((BATCH,), FEEDBACK))
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    full = np.concatenate([history, feedback], 1)

    def run_reprefill():
        t0 = time.perf_counter()
        state, _ = sampling.prefill(params, config, full, np.full((BATCH,), total), max_length=max_length)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    run_extend(), run_reprefill()  # compile
    return min(run_extend() for _ in range(5)), min(run_reprefill() for _ in range(5))


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    prompts = np.random.RandomState(0).randint(1, 512, (BATCH, PROMPT)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = _hf_model(tmp)
        config, params = hf.load_hf(tmp)
    ours = bench_ours(params, config, prompts)
    theirs = bench_transformers(hf_model, prompts)
    ceiling = bench_ceiling(params, config)
    t_extend, t_reprefill = bench_turns(params, config, prompts)
    print(json.dumps({
        "ours_tokens_per_s": round(ours, 1),
        "transformers_tokens_per_s": round(theirs, 1),
        "ceiling_tokens_per_s": round(ceiling, 1),
        "ratio_vs_transformers": round(ours / theirs, 3),
        "fraction_of_ceiling": round(ours / ceiling, 3),
        "extend_s": round(t_extend, 5),
        "reprefill_s": round(t_reprefill, 5),
        "extend_cost_vs_reprefill": round(t_extend / t_reprefill, 3),
        "batch": BATCH, "prompt": PROMPT, "new_tokens": NEW, "devices": jax.device_count(),
    }))


if __name__ == "__main__":
    main()
