"""The README's public API exists as documented: every import in its Python blocks works, and every
`module.name` it calls on an imported drift_jax module is there (with the keywords it passes)."""

import importlib
import inspect
import pathlib
import re

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
    """The README's tuning, performance (and, once measured, results) blocks are regenerated from the files
    in docs/results/, never edited by hand."""
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
    assert readme_results.main([*args, "--check"]) == 0
