"""Evaluation: greedy multi-turn episodes on held-out problems -> multi@k, correction rates, the run's report;
across runs, a multi-seed study (study.py) and new runs checked against its prediction intervals (replicate.py).

May import: lm, envs, rollout (the episode loop).
"""
