"""A stage and an evaluation from outside charter: each is one module under ``tests/plugins/`` ending in one
registry entry, loaded through ``CHARTER_PLUGINS`` with no other file edited, and each shows up everywhere
the built-ins do: ``charter --help``, ``charter config show``, the pre-run check, the report and the card.
Every step runs the real CLI in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "configs" / "demo.yaml")
PLUGINS = "tests.plugins.toy_stage,tests.plugins.toy_eval"


def charter(*args, plugins: str = PLUGINS, home: Path):
    env = {**os.environ, "CHARTER_PLUGINS": plugins, "CHARTER_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "charter", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def python(code: str, home: Path):
    env = {**os.environ, "CHARTER_PLUGINS": PLUGINS, "CHARTER_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_plugins_are_commands_and_config_sections(tmp_path):
    top = charter("--help", home=tmp_path)
    assert top.returncode == 0 and "a toy stage from a plugin" in top.stdout
    assert "a toy stage from a plugin" not in charter("--help", plugins="", home=tmp_path).stdout
    ev = charter("eval", "--help", home=tmp_path)
    assert ev.returncode == 0 and "a toy evaluation from a plugin" in ev.stdout
    show = charter("config", "show", DEMO, "toy.level=5", home=tmp_path)
    assert show.returncode == 0, show.stderr
    lines = show.stdout.splitlines()
    toy = next(i for i, x in enumerate(lines) if x.startswith("toy:"))
    assert "plugin: the toy stage" in lines[toy] and lines[toy + 1].split("#")[0].strip() == "level: 5"
    assert any(x.startswith("toyeval:") and "plugin: the toy evaluation" in x for x in lines)
    # the plugin stage follows the built-in stages, the plugin evaluation the built-in evaluations
    keys = [x.split(":")[0] for x in lines if x and not x.startswith(" ")]
    assert keys.index("toy") == keys.index("rl") + 1 and keys[-1] == "toyeval"


def test_plugins_are_checked_before_any_work(tmp_path):
    bad = charter("toy", DEMO, "name=toycheck", "toy.level=-1", home=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == \
        f"charter: error: {DEMO}.toy.level: expected a number >= 0, got -1"
    bad = charter("eval", "toyeval", DEMO, "name=toycheck", "toyeval.word=", home=tmp_path)
    assert bad.returncode == 1 and "toyeval.word: expected a word" in bad.stderr
    assert not (tmp_path / "runs" / "toycheck").exists()  # nothing written


def test_plugins_reach_the_report_and_the_card(tmp_path):
    run = tmp_path / "runs" / "toyrun"
    made = python(f"from charter import registry; from charter.config import load_config; "
                  f"print(registry.stage('toy').run(load_config({DEMO!r}, ['name=toyrun'])))", tmp_path)
    assert made.returncode == 0 and Path(made.stdout.strip()) == run / "toy", made.stderr
    ev = charter("eval", "toyeval", DEMO, "name=toyrun", home=tmp_path)
    assert ev.returncode == 0 and Path(ev.stdout.strip()) == run / "eval-toyeval", ev.stderr
    rep = charter("report", "toyrun", home=tmp_path)
    assert rep.returncode == 0, rep.stderr
    page = (run / "report.html").read_text()
    assert '<section id="toyeval"><h2>Toy</h2><p>toy says toy-result</p></section>' in page
    assert "<td class=\"l\">toy</td>" in page  # the overview's stage table
    # a finished merge stage (export needs one), faked: the card is what is checked here
    (run / "merge" / "model").mkdir(parents=True)
    (run / "merge" / "model" / "config.json").write_text("{}")
    (run / "merge" / "persona-adapter").mkdir()
    (run / "merge" / "persona-adapter" / "adapter_config.json").write_text("{}")
    (run / "merge" / "manifest.json").write_text(json.dumps({"base": "embedded", "counts": {}}))
    out = tmp_path / "exported"
    ex = charter("export", "toyrun", "--to", str(out), home=tmp_path)
    assert ex.returncode == 0, ex.stderr
    card = (out / "README.md").read_text()
    assert "- toy stage: level 3" in card
    assert "### toyeval\n\nThe toy evaluation says toy-result." in card
    assert "toy" in json.loads((out / "charter_run.json").read_text())


@pytest.mark.parametrize("name", ["train", "all", "seed"])
def test_a_taken_name_is_refused(name):
    from charter import registry

    with pytest.raises(ValueError, match="already"):
        registry.register(registry.Stage(name, "", lambda cfg: None, str))


def test_the_evaluation_prompt_pools_are_the_ones_rl_keeps_out():
    from charter import registry
    from charter.config import load_config

    cfg = load_config(None, ["robustness.prompt_source=a.jsonl", "coherence.prompt_source=b.jsonl"])
    assert set(registry.eval_prompt_sources(cfg)) == {cfg.robustness.prompt_source, cfg.coherence.prompt_source,
                                                      cfg.preferences.prompt_source}


def _spelled(value: str) -> set[str]:
    """The modules under charter/ that spell ``value`` as a string constant (docstrings aside)."""
    import ast

    where = set()
    for f in (ROOT / "charter").rglob("*.py"):
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        if any(isinstance(n, ast.Constant) and n.value == value and id(n) not in docs for n in ast.walk(tree)):
            where.add(f.relative_to(ROOT).as_posix())
    return where


# 'base', 'prompted' and 'trained' are also words of other vocabularies (a manifest's base model, the 'prompted'
# detector, the winning side of a judged pair), so the check covers the labels that are only conditions.
@pytest.mark.parametrize("label", ["prompted-nonote", "steered", "capped", "distilled"])
def test_a_condition_label_is_spelled_once(label):
    assert _spelled(label) == {"charter/registry.py"}


def test_the_manifest_file_name_is_spelled_in_one_place():
    assert _spelled("manifest.json") == {"charter/runs.py"}
