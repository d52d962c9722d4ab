"""The README's public API exists as documented: every import in its Python blocks works, and every
`module.name` it calls on an imported drift_jax module is there (with the keywords it passes)."""

import importlib
import inspect
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def _imported_modules() -> dict:
    names = {}
    for block in BLOCKS:
        for line in block.splitlines():
            if m := re.match(r"from (drift_jax[\w.]*) import (.+)", line):
                for name in (n.strip() for n in m.group(2).split(",")):
                    try:
                        names[name] = importlib.import_module(f"{m.group(1)}.{name}")
                    except ModuleNotFoundError:
                        names[name] = getattr(importlib.import_module(m.group(1)), name)
    return names


def test_readme_has_api_blocks():
    assert len(BLOCKS) >= 4


def test_every_documented_call_exists_with_its_keywords():
    names = _imported_modules()
    assert {"model", "hf", "sharding", "sampling", "driver", "trainer", "held_out", "online_rl"} <= set(names)
    calls = 0
    for block in BLOCKS:
        text = re.sub(r"#[^\n]*", "", block)
        for m in re.finditer(r"\b(\w+)\.(\w+)\(", text):
            owner = names.get(m.group(1))
            if owner is None or not inspect.ismodule(owner):
                continue
            assert hasattr(owner, m.group(2)), f"README calls {m.group(1)}.{m.group(2)}, which does not exist"
            fn = getattr(owner, m.group(2))
            # Keyword arguments of this call (up to its closing parenthesis) must be parameters of fn.
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            params = inspect.signature(fn).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                for kw in re.findall(r"[(,]\s*(\w+)=", text[m.end() - 1 : end + 1]):
                    if kw in params or (inspect.isclass(fn) and kw in getattr(fn, "__dataclass_fields__", {})):
                        continue
                    nested = re.search(rf"\w+\([^()]*\b{kw}=", text[m.end() : end])
                    assert nested, f"README passes {kw}= to {m.group(1)}.{m.group(2)}, which takes no such argument"
            calls += 1
    assert calls >= 20


def test_generated_blocks_are_what_their_results_files_give(monkeypatch):
    """The README's results, tuning, unseen-seed, performance and example-preflight blocks are regenerated
    from the files in docs/results/, never edited by hand."""
    from tools import readme_results

    monkeypatch.chdir(pathlib.Path(__file__).parents[1])  # the blocks name their sources relative to the repo
    # The study's seeds are kept in docs/results/study/ (KEEP=docs/results/study bash launch/study.sh).
    tune, study = pathlib.Path("docs/results/tune.md"), pathlib.Path("docs/results/study/study.json")
    assert tune.exists(), "docs/results/tune.md (launch/tune.py's) is what the config's tuned values trace to"
    # New seeds against the study (python -m drift_jax.evaluation.replicate ... --out docs/results/study-unseen).
    unseen = pathlib.Path("docs/results/study-unseen/replication.md")
    # The performance table: tools/run_benchmarks.sh's records (a benchmark without one is "not measured").
    args = ([str(study)] if study.exists() else []) + [f"--tune={tune}", "--bench=docs/results/benchmarks"]
    args += [f"--unseen={unseen}"] if unseen.exists() else []
    # The example preflight table (python tools/keep_preflight.py RECORD -- <the command in the README>).
    preflight = pathlib.Path("docs/results/preflight/paper_qwen2_5_3b_v5e_4x8.json")
    assert preflight.exists(), "the README's example preflight table is the kept output of tools/keep_preflight.py"
    args += [f"--preflight={preflight}"]
    assert readme_results.main([*args, "--check"]) == 0


def test_the_example_preflight_is_kept_with_its_commit_and_never_on_failure(tmp_path, monkeypatch):
    """tools/keep_preflight.py keeps the preflight's stdout with the code it came from, refuses a dirty tree
    before compiling anything, keeps nothing when the preflight fails; readme_results renders the record."""
    import json
    import subprocess

    from tools import keep_preflight, readme_results

    prov = {"commit": "0123456789abcdef", "code": {}, "dirty": False, "lock_sha256": "x",
            "machine": {"processor": "AMD EPYC", "cpus": 2, "platform": "Linux"}}
    monkeypatch.setattr(keep_preflight.keep_run, "provenance", lambda: dict(prov))
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw["env"]["JAX_PLATFORMS"]))
        return subprocess.CompletedProcess(cmd, 0, stdout="stage | fits\ntrain | yes\n", stderr="")

    out = tmp_path / "p" / "r.json"
    record = keep_preflight.keep(str(out), ["--config=c.py", "--topology=v5e:2x2"], run=fake_run)
    assert calls[0][0][1:] == ["-m", "drift_jax.preflight", "--config=c.py", "--topology=v5e:2x2"] and calls[0][1] == "cpu"
    assert json.loads(out.read_text()) == record and record["provenance"] == prov
    assert record["command"] == "python -m drift_jax.preflight --config=c.py --topology=v5e:2x2"
    block = readme_results.preflight_block(record, "p/r.json")
    assert block.startswith(readme_results.PREFLIGHT_BEGIN) and block.endswith(readme_results.PREFLIGHT_END)
    assert "```bash\npython -m drift_jax.preflight --config=c.py --topology=v5e:2x2\n```\n\n```\nstage | fits\ntrain | yes\n```" in block
    assert f"Printed at 01234567 on AMD EPYC (2 CPU cores), in {record['seconds']} s; kept in `p/r.json`" in block

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="stage train does not fit on v5e:2x2")

    with pytest.raises(RuntimeError, match="exited 1; nothing kept:\nstage train does not fit"):
        keep_preflight.keep(str(tmp_path / "failed.json"), [], run=failing)
    assert not (tmp_path / "failed.json").exists()
    prov["dirty"] = True
    with pytest.raises(RuntimeError, match="commit first"):
        keep_preflight.keep(str(tmp_path / "dirty.json"), [], run=lambda *a, **k: pytest.fail("compiled on a dirty tree"))
