"""Preflight: every stage of a run compiled ahead of time for its target chips (no TPU needed), so a launch that does not fit fails in its first minute."""
