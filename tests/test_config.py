"""Run configs: every shipped config loads; overrides apply; unknown keys and wrong types are errors."""

from pathlib import Path

import pytest

from charter.config import ConfigError, load_config

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name and cfg.expand.model is not None


def test_overrides_apply_with_yaml_types():
    cfg = load_config("configs/demo.yaml", ["distill.samples_per_prompt=3", "distill.teacher.model=/x/y",
                                            "dpo.trl={learning_rate: 1.0e-4}", "persona=sarcastic"])
    assert cfg.distill.samples_per_prompt == 3
    assert cfg.distill.teacher.model == "/x/y"
    assert cfg.dpo.trl == {"learning_rate": 1e-4}
    assert cfg.persona == "sarcastic"


@pytest.mark.parametrize("override,expected", [
    ("distill.sample_per_prompt=3", "unknown key 'sample_per_prompt'"),
    ("distill.samples_per_prompt=many", "distill.samples_per_prompt: expected int"),
    ("student=3", "config.student: expected a mapping"),
    ("nokey", "expected key=value"),
    ("seed=true", "config.seed: expected int"),
])
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_config(None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndistill:\n  teacher:\n    modle: foo\n")
    with pytest.raises(ConfigError, match=r"c.yaml.distill.teacher: unknown key 'modle'"):
        load_config(p)


def test_expand_model_defaults_to_teacher():
    cfg = load_config(None, ["distill.teacher.model=some/teacher"])
    assert cfg.expand.model.model == "some/teacher"


def test_partial_section_keeps_the_section_defaults():
    cfg = load_config(None, ["preferences.judge_sampling.max_tokens=64", "distill.teacher_sampling={top_p: 0.5}"])
    js = cfg.preferences.judge_sampling
    assert js.max_tokens == 64 and js.temperature == 0.1 and js.repetition_penalty == 1.0
    assert cfg.distill.teacher_sampling.top_p == 0.5 and cfg.distill.teacher_sampling.max_tokens == 1024
