"""Weighted-SFT train step throughput: ours (JAX, f32 and bf16 compute) against the same step in PyTorch.

    .venv/bin/python benchmarks/train_step.py [--steps 10] [--warmup 3] [--repeats 3]

Prints one JSON line. Model: a random Qwen2 (4 layers, hidden 256, 8 heads, 2 KV heads, vocab 512);
batch: 16 sequences of 256 tokens, the first half of each a prompt (unscored), random weights. The
PyTorch step is transformers' Qwen2ForCausalLM with the same loss sum(w * token-mean NLL) / sum(w),
torch AdamW and grad clipping. Timings alternate between the two and take the median of `repeats`.
`mfu` = our model FLOPs per second (6N + causal attention, `update.flops_per_token`) / this machine's f32 matmul
peak, measured as the best of large JAX and PyTorch f32 matmuls next to each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from drift_jax.lm import model, sharding
from drift_jax.train import batches, update

B, T, VOCAB, HIDDEN, LAYERS, HEADS, KV, MLP = 16, 256, 512, 256, 4, 8, 2, 1024


def model_config(dtype: str = "float32") -> model.ModelConfig:
    return model.ModelConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=KV,
        head_dim=HIDDEN // HEADS, mlp_dim=MLP, qkv_bias=True, rope_theta=1e6, rms_norm_eps=1e-6, dtype=dtype,
    )


def examples(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    mask = np.zeros(T, np.int8)
    mask[T // 2 :] = 1
    return [
        {"tokens": rng.integers(0, VOCAB, T).astype(np.int32), "loss_mask": mask, "weight": np.float32(rng.uniform(0, 3))}
        for _ in range(B)
    ]


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    fn(steps)
    return time.perf_counter() - t0


def jax_stepper(dtype: str, tc: update.TrainConfig, batch_np: dict):
    cfg = model_config(dtype)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx = update.make_optimizer(tc, 1000)
    state_sh = update.state_shardings(mesh, cfg, tx)
    batch_sh = update.batch_shardings(mesh, {k: v.shape for k, v in batch_np.items()})
    params = model.init_params(cfg, jax.random.key(0))
    state = jax.device_put(update.init_state(params, tx), state_sh)
    batch = jax.device_put(batch_np, batch_sh)
    step_fn = update.compile_train_step(cfg, tx, mesh, state_sh, batch_sh)
    box = [state]

    def run(n):
        with jax.set_mesh(mesh):
            s = box[0]
            for _ in range(n):
                s, m = step_fn(s, batch)
            jax.block_until_ready(m["loss"])
            box[0] = s

    return run


def torch_stepper(tc: update.TrainConfig, exs: list[dict]):
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=T, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa", torch_dtype=torch.float32,
    )
    net = transformers.Qwen2ForCausalLM(hf_cfg).float().train()
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(tc.b1, tc.b2), eps=tc.eps)
    tokens = torch.tensor(np.stack([e["tokens"] for e in exs]), dtype=torch.long)
    scored = torch.tensor(np.stack([e["loss_mask"][1:] for e in exs]), dtype=torch.float32)
    weights = torch.tensor([float(e["weight"]) for e in exs])

    def step():
        logits = net(input_ids=tokens).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1), reduction="none").view(B, T - 1)
        per_example = (nll * scored).sum(1) / scored.sum(1)
        loss = (weights * per_example).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.clip_norm)
        opt.step()
        return loss

    def run(n):
        for _ in range(n):
            step()

    return run


def matmul_peak(n: int = 2048, reps: int = 3) -> float:
    import torch

    flops = 2.0 * n**3
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        best = max(best, flops / (time.perf_counter() - t0))
    ta = torch.randn(n, n)
    ta @ ta
    for _ in range(reps):
        t0 = time.perf_counter()
        ta @ ta
        best = max(best, flops / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    tc = update.TrainConfig(lr=1e-4, warmup_steps=0, batch_size=B, seq_len=T, pack=False)
    exs = examples()
    batch_np = batches.Batcher(batches.ExampleSource(exs), tc.batch_config()).host_batch(0)
    tokens = B * T
    runners = {
        "jax_f32": jax_stepper("float32", tc, batch_np),
        "jax_bf16": jax_stepper("bfloat16", tc, batch_np),
        "torch_f32": torch_stepper(tc, exs),
    }
    for run in runners.values():
        run(args.warmup)
    # The machine may be shared: the peak is re-measured next to each repeat's timings, and each
    # repeat's MFU uses its own peak, so load that comes and goes affects both sides alike.
    fpt = update.flops_per_token(model_config(), T)
    times = {k: [] for k in runners}
    peaks, mfus, mfus_bf16 = [], [], []
    for _ in range(args.repeats):
        peaks.append(matmul_peak())
        for k, run in runners.items():
            times[k].append(timed(run, args.steps) / args.steps)
        mfus.append(fpt * tokens / times["jax_f32"][-1] / peaks[-1])
        mfus_bf16.append(fpt * tokens / times["jax_bf16"][-1] / peaks[-1])
    step_s = {k: float(np.median(v)) for k, v in times.items()}
    peak = float(np.median(peaks))
    ours = tokens / step_s["jax_f32"]
    out = {
        "benchmark": "train_step",
        "batch": [B, T],
        "steps": args.steps,
        "jax_f32_step_s": round(step_s["jax_f32"], 4),
        "jax_bf16_step_s": round(step_s["jax_bf16"], 4),
        "torch_f32_step_s": round(step_s["torch_f32"], 4),
        "tokens_per_s": round(ours),
        "torch_tokens_per_s": round(tokens / step_s["torch_f32"]),
        "ratio_vs_pytorch": round(ours / (tokens / step_s["torch_f32"]), 3),
        "ratio_bf16_vs_pytorch": round(step_s["torch_f32"] / step_s["jax_bf16"], 3),
        "model_gflops_per_step": round(fpt * tokens / 1e9, 2),
        "peak_f32_matmul_gflops": round(peak / 1e9, 1),
        "mfu": round(float(np.median(mfus)), 3),
        "mfu_bf16_compute": round(float(np.median(mfus_bf16)), 3),
        "ratio_per_repeat": [round(t / j, 3) for t, j in zip(times["torch_f32"], times["jax_f32"])],
        "devices": f"{jax.devices()[0].platform} x{os.cpu_count()} cores",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
