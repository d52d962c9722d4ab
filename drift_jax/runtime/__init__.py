"""Process plumbing every room may use: multi-host start-up, host gathers, one writer, barriers.

May import: nothing else of drift_jax (it sits below lm/).
"""
