"""Llama-3.1-8B-Instruct with DRIFT on MetaMathQA-MATH, evaluated on MATH500 (the paper's second model).

    python -m drift_jax.main --config=configs/llama3_1_8b.py --workdir=gs://BUCKET/drift/llama8b \
        --config.model.hf_path=/data/Llama-3.1-8B-Instruct --config.task.manual_dir=/data/drift_tasks --multihost

Same hyperparameters as configs/paper_qwen2_5_3b.py; FSDP x tensor parallel (8B with AdamW in f32 needs
~128 GiB: a v5e-64 with fsdp=16, tensor=4, or 8 H100s with fsdp=8). Paper all-benchmark average:
DRIFT 55.6 vs online multi-turn RL 56.1.

Preflight on a v5e-64 (per chip of 15.75 GiB, prompts up to 512 tokens):
    python -m drift_jax.preflight --config=configs/llama3_1_8b.py --topology=v5e:8x8 \
        --config.model.preset=llama3_1_8b
rollout prefill 6.87 GiB, decode 5.63 GiB (5.35 GB of HBM traffic per token step, roofline 612
tokens/s/chip), train step 8.81 GiB (44% headroom; 98 GB of weight all-gathers and 61,968
collective-permutes of 76 GB per step; compute-bound, roofline 2.1 s per step, MFU 95.4%), eval
decode 7.22 GiB. The roofline is compute-bound, so its MFU is the model FLOPs over the compiled step's 414
TFLOP per chip (little is recomputed): an upper bound a real step will stay under, as it waits on the
weight all-gathers and permutes the roofline overlaps. The train step needs micro_batches=8:
16 rows per micro-batch, one per data x fsdp group.
"""

import ml_collections

from configs import _args, paper_qwen2_5_3b


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = paper_qwen2_5_3b.get_config()
    c.mesh = dict(data=1, fsdp=-1, tensor=4)
    c.rollout.rows_per_batch = 256
    c.train.micro_batches = 8  # 16 rows per micro-batch: one per data x fsdp group
    return _args.apply(c, arg)
