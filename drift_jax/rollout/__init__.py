"""Rollouts and weighting: multi-turn episodes from the fixed reference, returns, exp(R/beta)/Z weights, examples.

Data flow: `episodes` (generate, verify, feed back) -> `driver` (N problems x K samples, resumable
shards) -> `returns` (per-trajectory R) -> `weights` (R -> importance weights) -> `supervision`
(trajectory + weight -> a weighted SFT example).
May import: lm, envs.
"""
