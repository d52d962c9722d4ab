"""Training: weighted examples on disk -> packed, host-sharded batches -> the weighted-SFT step and loop.

`batches` (examples and their deterministic batches), `update` (optimizer, loss, the jitted step), `trainer`
(the loop: resume, logging, NaN stops), `checkpoint` (Orbax save/restore).
May import: lm.
"""
