"""The run layout: stage order, where outputs live, and the "run `charter X` first" errors."""

import json

import pytest

from charter import layout
from charter.cli import build_parser
from charter.config import load_config
from charter.runs import run_dir


def finish(cfg, stage):
    d = run_dir(cfg.name) / stage
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"finished_at": "today"}))
    return d


def test_every_stage_has_a_module_a_command_and_a_summary():
    import importlib

    from charter import registry

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for s in registry.stages():
        mod = importlib.import_module(f"charter.stages.{s.name}")
        assert s.run is mod.run and s.summary is mod.summary and callable(mod.stage_config)
        assert s.name in sub and sub[s.name].description is None  # registered from the registry
    for e in registry.evaluations():
        assert callable(e.run) and e.folder == f"eval-{e.name}"


def test_an_output_is_missing_until_its_stage_finished():
    cfg = load_config(None, ["name=lay"])
    p = layout.path(cfg, "distilled_model")
    assert p == run_dir("lay") / "dpo" / "model" and layout.path(run_dir("lay"), "distilled_model") == p
    with pytest.raises(layout.MissingOutput, match=r"run `charter dpo` first") as e:
        layout.distilled_model(cfg)
    assert str(p) in str(e.value)
    p.mkdir(parents=True)
    with pytest.raises(layout.MissingOutput):  # a folder without its stage's manifest may be half-written
        layout.distilled_model(cfg)
    finish(cfg, "dpo")
    assert layout.distilled_model(cfg) == p
    with pytest.raises(layout.MissingOutput, match=r"dpo/adapter does not exist yet \(run `charter dpo` first"):
        layout.adapters(cfg)  # the DPO adapter was never written
    (p.parent / "adapter").mkdir()
    with pytest.raises(layout.MissingOutput, match=r"run `charter sft` first"):
        layout.adapters(cfg)
    with pytest.raises(layout.MissingOutput, match=r"run `charter merge` first"):
        layout.final_model(cfg)
    with pytest.raises(layout.MissingOutput, match=r"run `charter eval steering` first"):
        layout.steering_dir(cfg)


def test_run_models_need_a_loadable_folder():
    cfg = load_config(None, ["name=lay2"])
    d = finish(cfg, "merge")
    (d / "model").mkdir()
    with pytest.raises(layout.MissingOutput, match="condition 'trained'.*charter train"):
        layout.run_model(cfg, "trained")
    (d / "model" / "config.json").write_text("{}")
    assert layout.run_model(cfg, "trained") == d / "model"
    assert set(layout.run_models()) == {"distilled", "trained", "rl"}


def test_the_constitution_is_the_expanded_one_only_when_expand_finished(tmp_path):
    from charter import constitution as const

    cfg = load_config(None, ["name=lay3", "persona=loving"])
    assert layout.constitution(cfg).name == "loving"
    c = const.load("loving")
    c.traits[0].additional_prompts = ["A brand new prompt about kindness?"]
    p = layout.path(cfg, "constitution")
    p.parent.mkdir(parents=True)
    p.write_text(c.to_yaml())
    assert layout.constitution(cfg).traits[0].additional_prompts == []  # not finished: the configured one
    finish(cfg, "expand")
    assert layout.constitution(cfg).traits[0].additional_prompts == ["A brand new prompt about kindness?"]
    assert layout.constitution_id(layout.constitution(cfg)) != layout.constitution_id(const.load("loving"))
    off = load_config(None, ["name=lay3", "persona=loving", "expand.enabled=false"])
    assert layout.constitution(off).traits[0].additional_prompts == []


def test_trained_prompts_reads_every_stage_prompt_log_the_layout_lists(tmp_path):
    from charter.runs import write_jsonl_atomic

    run = tmp_path / "r"
    assert layout.trained_prompts(run) == {"distill": [], "introspect": [], "rl": []}  # nothing written yet
    write_jsonl_atomic(layout.path(run, "teacher_rows"), [{"id": "a", "prompt": "teach"}, {"id": "b"}])
    write_jsonl_atomic(layout.path(run, "pairs"), [{"prompt": [{"role": "system", "content": "sys"},
                                                               {"role": "user", "content": "pair"}]}])
    write_jsonl_atomic(layout.path(run, "reflections"), [{"prompt": "reflect"}])
    write_jsonl_atomic(layout.path(run, "rl_prompts"), [{"prompt": "reinforce", "attack": "x"}])
    assert layout.trained_prompts(run) == {"distill": ["teach", "pair"], "introspect": ["reflect"],
                                           "rl": ["reinforce"]}
    from charter import registry

    assert {layout.outputs()[k].stage for k in registry.trained_prompts()} <= set(registry.stage_names())
