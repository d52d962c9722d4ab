"""Paper reproduction: Qwen2.5-3B-Instruct, rollouts on the MATH subset of MetaMathQA, eval on MATH500.

    python -m drift_jax.main --config=configs/paper_qwen2_5_3b.py --workdir=gs://BUCKET/drift/qwen3b \
        --config.model.hf_path=/data/Qwen2.5-3B-Instruct --config.task.manual_dir=/data/drift_tasks \
        --multihost                      # on a TPU pod: see launch/tpu_pod.sh

Local files (nothing is downloaded): <manual_dir>/metamath_math/train*.jsonl (MetaMathQA rows; MATH_*
types are kept) and <manual_dir>/math500/test*.jsonl. The paper's hyperparameters (docs/method.md):
K=16 samples of up to T=5 turns, 512 new tokens per turn, temperature 1.0, gamma 0.9, beta 0.1, lr 5e-6
constant with 10% warmup, 1 epoch, weight decay 0.1, clip 1.0, 128 sequences per step, bf16 compute.
Expected (paper, multi@5 on MATH500): base 38.3 -> DRIFT 55.9. Mesh: FSDP over all chips of a
TPU v4-32 / v5e-32; rollouts and eval hold the bf16 weights whole on every chip (no gather per token).

Preflight on a v5e-32 (README, "Before you launch"; per chip of 15.75 GiB, prompts up to 512 tokens):
    python -m drift_jax.preflight --config=configs/paper_qwen2_5_3b.py --topology=v5e:4x8 \
        --config.model.preset=qwen2_5_3b
rollout prefill 9.25 GiB, decode 7.87 GiB (no collectives per token; 8.16 GB of HBM traffic per token
step, 1.015x its floor of weights + cache, roofline 1605 tokens/s/chip), train step 13.51 GiB (14%
headroom; 36 all-gathers of 19.9 GB and 101,876 collective-permutes of 130 GB per step, the compiler's
windowed matmuls gathering the FSDP weights shard by shard; roofline MFU 48%, bound by HBM bytes, a term
the agreement benchmark cannot check), eval 8.24 / 7.87 GiB. The train step
fits by micro_batches=4 (32 rows each: one per chip) and a chunked cross-entropy: in one micro-batch it
needed 49.7 GB of temporaries (40.7 GiB with the chunked loss alone); remat="full" brings it to 5.06 GiB,
recomputing every layer's forward.
"""

import ml_collections

from configs import _args, quickstart


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = quickstart.get_config()
    c.methods = ("reference", "drift")
    c.max_new_tokens = 512
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.task = dict(name="metamath_math", data_dir="/tmp/drift_jax_tfds", manual_dir="", knobs=dict())
    c.model = dict(preset="", hf_path="", tokenizer_path="", param_dtype="float32", compute_dtype="bfloat16",
                   remat="save_matmuls", scratch=dict())
    c.rollout = dict(num_problems=1800, num_samples=16, temperature=1.0, top_k=0, top_p=1.0,
                     rows_per_batch=512, problems_per_shard=64,
                     engine=dict(chunk_steps=32, prompt_buckets=(128, 256, 512, 1024), cache_length=0, prefill_rows=4))
    c.returns = dict(gamma=0.9, format_penalty=-0.1, repeat_penalty=0.5)
    c.drift = dict(beta=0.1, normalize="group", all_fail="keep", clip=0.0, supervision="terminal")
    c.train = dict(lr=5e-6, warmup_ratio=0.1, schedule="constant", weight_decay=0.1, clip_norm=1.0,
                   batch_size=128, micro_batches=4, seq_len=4096, epochs=1, save_every=50, progress_bar=True)
    c.budgets = dict(drift=0, sft_rollouts=0, rft=0, sft=0)  # train.epochs for every method (the paper's 1)
    # methods=(..., "online_rl"): 32 problems x 8 samples per iteration, one step of 256 trajectories.
    c.online_rl.update(problems_per_iteration=32, samples_per_problem=8, kl_coef=0.01, eval_every=10)
    c.online_rl.train = dict(lr=1e-6, warmup_ratio=0.0, warmup_steps=5, schedule="constant", weight_decay=0.0,
                             clip_norm=1.0, batch_size=256, micro_batches=8, seq_len=4096,
                             loss_reduction="token_sum", progress_bar=False)
    c.eval = dict(task=dict(name="math500", data_dir="/tmp/drift_jax_tfds", manual_dir=""), split="test",
                  num_problems=0, rows_per_batch=512,
                  engine=dict(chunk_steps=32, prompt_buckets=(128, 256, 512, 1024), cache_length=0, prefill_rows=32))
    return _args.apply(c, arg)
