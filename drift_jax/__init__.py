"""drift_jax: DRIFT (decoupled rollouts, importance-weighted fine-tuning) in JAX, one room per pipeline stage.

Rooms in data-flow order (each may import only the rooms above it):
  runtime/     multi-host start-up, host gathers, one writer, barriers (below everything)
  lm/          the language model: decoder, sharding rules, HF bridge, sampler
  envs/        multi-turn feedback environments: tasks, verifiers, chat template, task files
  rollout/     trajectories from the fixed reference -> returns -> importance weights -> weighted examples
  train/       weighted examples -> packed batches -> the weighted-SFT step and loop, checkpoints
  evaluation/  held-out multi@k and correction rates; results.json, report.md, report.png
  baselines/   SFT, SFT on rollouts, RFT and online multi-turn RL on the same data, sampler and trainer
At the top: `pipeline.py` (the stages), `stage_io.py` (what they read from the config and exchange on disk:
library configs, problems, policies as HF directories), `stages.py` (their markers, keyed by the config and
inputs they read), `validate.py` (the whole config checked before any stage), `input_files.py` (the files it
reads, checked without loading weights) and the entry points `main.py` (flags) and `evaluate.py` (the
multi@k command line).
"""
