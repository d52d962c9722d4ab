"""Training: weighted examples on disk -> packed, host-sharded batches -> the weighted-SFT step and loop.

`batches` (examples and their deterministic batches), `trainer` (loss, step, loop), `checkpoint`
(Orbax save/restore).
May import: lm.
"""
