"""multi@k evaluation: library call on a tiny policy and the command line on an exported HF directory."""

import json

import numpy as np
import pytest
import rollout_fixture as fx

from drift_jax import episodes, evaluate, pipeline


def test_evaluate_matches_episodes_and_is_deterministic():
    params, probs = fx.params(4), fx.problems(5)
    ep = episodes.EpisodeConfig(max_turns=3, max_new_tokens=4)
    a = evaluate.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=4)
    b = evaluate.evaluate(params, fx.CFG, fx.CHAT, probs, ep, rows_per_batch=8)
    assert a["solved_turns"] == b["solved_turns"] and a["num_problems"] == 5
    recs = episodes.run_episodes(params, fx.CFG, fx.CHAT, probs, [0] * 5, ep)
    assert a["solved_turns"] == [r["solved_turn"] for r in recs]
    assert a["multi@3"] == np.mean([s > 0 for s in a["solved_turns"]])
    with pytest.raises(ValueError, match="greedily"):
        evaluate.evaluate(params, fx.CFG, fx.CHAT, probs, episodes.EpisodeConfig(temperature=1.0))


def test_command_line(tmp_path, capsys):
    pipeline.save_policy(fx.CFG, fx.params(4), str(pipeline.envs.SYNTHETIC_TOKENIZER), str(tmp_path / "policy"))
    evaluate.main([f"--policy={tmp_path / 'policy'}", "--num_problems=6", "--max_turns=2", "--max_new_tokens=4",
                   "--rows_per_batch=8", "--mesh=data=-1", f"--out={tmp_path / 'eval.json'}"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["num_problems"] == 6 and set(line) == {"multi@1", "multi@2", "num_problems"}
    assert json.loads((tmp_path / "eval.json").read_text())["multi@2"] == line["multi@2"]
