#!/usr/bin/env bash
# Runs an experiment on a Cloud TPU pod: create (or reuse) the TPU VM, copy this checkout to every
# worker, install jax[tpu] + requirements, and start the same command on all workers (multi-host).
#
#   TPU_NAME=drift-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-32 \
#     bash launch/tpu_pod.sh configs/paper_qwen2_5_3b.py gs://BUCKET/drift/qwen3b \
#       --config.model.hf_path=/data/Qwen2.5-3B-Instruct --config.task.manual_dir=/data/drift_tasks
#
# Model weights and task files must already be on every worker (or a mounted bucket): nothing is
# downloaded at run time. Set VERSION to the TPU software version of your accelerator.
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:=v5litepod-32}" "${VERSION:=v2-alpha-tpuv5-lite}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi
tar -C "$ROOT" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/drift_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/drift_jax.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
ARGS="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e; mkdir -p ~/drift_jax && tar -xzf ~/drift_jax.tgz -C ~/drift_jax && cd ~/drift_jax
  python3 -m venv .venv && .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q 'jax[tpu]' -r requirements.txt gcsfs==2026.10.1
  .venv/bin/python -m drift_jax.main --config=$CONFIG --workdir=$WORKDIR --multihost $ARGS"
