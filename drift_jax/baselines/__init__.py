"""Baselines compared with DRIFT on the same reference, task, sampler and trainer.

`offline`: the data of single-turn SFT on gold answers, SFT on the rollouts with uniform weights (the
paper's SFT-5turn) and rejection-sampling fine-tuning; `online_rl`: on-policy multi-turn RL.
May import: lm, envs, rollout, train.
"""
