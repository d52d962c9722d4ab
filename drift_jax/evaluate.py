"""Command line for held-out multi@k of any HF policy directory (model + tokenizer) on a task.

    python -m drift_jax.evaluate --policy=DIR --task=synthetic --num_problems=400 --max_turns=5
    python -m drift_jax.evaluate --policy=/ckpt/Qwen2.5-3B-Instruct --task=math500 \
        --manual_dir=/data/math500 --data_dir=/data/tfds --max_new_tokens=512 --mesh=data=-1,tensor=1

Prints one JSON line (multi@k, num_problems); `--out` writes the full result. The library call is
`drift_jax.evaluation.held_out.evaluate`.
"""

import json
import sys

from absl import app, flags

from drift_jax import envs, validate
from drift_jax.evaluation import held_out
from drift_jax.lm import hf, sharding
from drift_jax.rollout import episodes

_POLICY = flags.DEFINE_string("policy", None, "HF directory with the model and its tokenizer", required=True)
_TASK = flags.DEFINE_string("task", "synthetic", "synthetic or a local format (math500, gsm8k, gpqa, ...)")
_SPLIT = flags.DEFINE_string("split", "test", "split of the task")
_NUM_PROBLEMS = flags.DEFINE_integer("num_problems", 0, "0: all (synthetic: 500)")
_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/drift_jax_tfds", "TFDS data dir of file-based tasks")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "where the task's local files are")
_MAX_TURNS = flags.DEFINE_integer("max_turns", 5, "turns per episode (multi@1..max_turns)")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 512, "tokens per answer")
_FEEDBACK = flags.DEFINE_string("feedback", envs.DEFAULT_FEEDBACK, "the user message after a wrong answer")
_ROWS = flags.DEFINE_integer("rows_per_batch", 256, "episodes decoded together")
_DTYPE = flags.DEFINE_string("dtype", None, "parameter dtype (default: the checkpoint's)")
_MESH = flags.DEFINE_string("mesh", "data=-1", "mesh axes, e.g. data=-1,tensor=2")
_OUT = flags.DEFINE_string("out", None, "write the full result as JSON here")


def main(argv) -> None:
    del argv
    try:
        shape = {k: int(v) for k, v in (kv.split("=") for kv in _MESH.value.split(",") if kv)}
    except ValueError:
        sys.exit(f"error: --mesh={_MESH.value!r}: expected axis=size pairs, e.g. data=-1,tensor=2")
    try:  # every problem with the inputs at once, before any weight is read
        validate.check_evaluate(policy=_POLICY.value, task=_TASK.value, split=_SPLIT.value,
                                num_problems=_NUM_PROBLEMS.value, manual_dir=_MANUAL_DIR.value,
                                max_turns=_MAX_TURNS.value, max_new_tokens=_MAX_NEW_TOKENS.value,
                                feedback=_FEEDBACK.value, rows_per_batch=_ROWS.value, dtype=_DTYPE.value, mesh=shape)
    except validate.ConfigError as e:
        sys.exit(f"error: {e}")
    mesh = sharding.make_mesh(shape)
    model_config, params = hf.load_hf(_POLICY.value, mesh=mesh, dtype=_DTYPE.value)
    chat = envs.ChatFormat.from_pretrained(_POLICY.value)
    if _TASK.value == "synthetic":
        problems = envs.synthetic.make_problems(_SPLIT.value, _NUM_PROBLEMS.value or 500)
    else:
        problems = envs.load_problems(_TASK.value, _SPLIT.value, _DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
        problems = problems[: _NUM_PROBLEMS.value] if _NUM_PROBLEMS.value else problems
    episode = episodes.EpisodeConfig(max_turns=_MAX_TURNS.value, max_new_tokens=_MAX_NEW_TOKENS.value,
                                     feedback=_FEEDBACK.value)
    result = held_out.evaluate(params, model_config, chat, problems, episode, mesh=mesh, rows_per_batch=_ROWS.value)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("multi@") or k == "num_problems"}))


if __name__ == "__main__":
    app.run(main)
