"""Evaluation: greedy multi-turn episodes on held-out problems -> multi@k, correction rates, the run's report.

May import: lm, envs, rollout (the episode loop).
"""
