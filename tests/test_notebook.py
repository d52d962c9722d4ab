"""The Colab notebook (launch/colab_quickstart.ipynb), executed headless on CPU with nbclient as a user runs it:
its settings cell replaced by a tiny run (fast), or by the quickstart's quick look (slow)."""

import json
import os
import pathlib

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).parents[1]
NOTEBOOK = ROOT / "launch" / "colab_quickstart.ipynb"
# tests/test_pipeline.py's tiny_config as the notebook's dotted overrides: seconds per stage on 8 fake devices.
TINY = {
    "max_turns": 2, "mesh.data": 4, "mesh.tensor": 2, "model.scratch.hidden_size": 32, "model.scratch.num_layers": 1,
    "model.scratch.num_heads": 2, "model.scratch.num_kv_heads": 1, "model.scratch.mlp_dim": 64,
    "reference.num_demos": 64, "reference.train.epochs": 1, "reference.train.batch_size": 8,
    "reference.train.seq_len": 64, "reference.train.progress_bar": False, "rollout.num_problems": 6,
    "rollout.num_samples": 2, "rollout.rows_per_batch": 8, "rollout.problems_per_shard": 4, "train.epochs": 1,
    "train.batch_size": 4, "train.seq_len": 96, "train.progress_bar": False, "eval.num_problems": 8,
    "eval.rows_per_batch": 8, "drift.all_fail": "keep",  # an untrained tiny policy solves nothing
    "budgets.drift": 0, "budgets.sft_rollouts": 0, "budgets.rft": 0, "budgets.sft": 0,  # train.epochs for all
}


def run_notebook(workdir: pathlib.Path, overrides: dict, timeout: int) -> nbformat.NotebookNode:
    """Executes the notebook from the repository root (as after `%cd drift_jax`), nothing installed, with
    a cell after the `parameters` cell that sets the run (papermill's convention)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    settings = (f"WORKDIR = {str(workdir)!r}\nMETHODS = ('reference', 'drift')\nOVERRIDES = {overrides!r}\n"
                "INSTALL = False")
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(settings, metadata={"tags": ["injected-parameters"]}))
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, set[str]]:
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs for k in o.get("data", {})}
    return text, kinds


def test_notebook_is_valid_and_its_settings_cell_is_tagged():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs


def test_notebook_runs_headless_on_a_tiny_config(tmp_path):
    nb = run_notebook(tmp_path / "run", TINY, timeout=600)
    text, kinds = _outputs(nb)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["methods"]) == {"reference", "drift"}
    assert f'"multi@2": {results["methods"]["drift"]["multi@2"]}' in text  # the run cell printed the results
    assert {"text/markdown", "image/png"} <= kinds  # the report cell showed report.md and report.png


@pytest.mark.slow
def test_notebook_quick_look_on_the_quickstart_config(tmp_path):
    """The notebook's own quick look (reference and DRIFT on configs/quickstart.py, ~2-4 minutes), on the
    machine's real devices like the quickstart (conftest's 8 fake devices would not divide its batches)."""
    saved = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = ""  # the kernel inherits this process's environment
    try:
        nb = run_notebook(tmp_path / "run", {}, timeout=1800)
    finally:
        os.environ["XLA_FLAGS"] = saved or ""
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["methods"]["drift"]["multi@5"] > 0 and "image/png" in _outputs(nb)[1]
