"""`charter config show`: every config key has a help text, printed beside the resolved value."""

import yaml

from charter import cli
from charter.config import load_config, to_dict
from charter.config_show import missing_help, show

DEMO = "configs/demo.yaml"


def test_every_config_field_has_a_help_text():
    assert missing_help() == []


def test_the_output_is_yaml_that_loads_back_to_the_same_config():
    cfg = load_config(DEMO, ["distill.samples_per_prompt=3", "dpo.trl={learning_rate: 0.0001}",
                             "preferences.models=[base, trained]", "student.name='no'"])
    text = show(cfg)
    assert yaml.safe_load(text) == to_dict(cfg)
    back = yaml.safe_load(text)
    assert back["distill"]["samples_per_prompt"] == 3 and back["dpo"]["trl"] == {"learning_rate": 0.0001}
    assert back["student"]["name"] == "no"  # a string that YAML would read as a boolean stays a string


def test_each_key_has_its_help_beside_it(capsys):
    assert cli.main(["config", "show", DEMO, "seed=7"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    seed = next(line for line in lines if line.startswith("seed:"))
    assert "seed: 7" in seed and "# seeds every sampled choice" in seed
    assert any(line.startswith("  samples_per_prompt:") and "# K: teacher/student samples" in line for line in lines)
    assert any(line.startswith("distill:") and "# stage 2" in line for line in lines)  # sections too
    assert all("#" in line for line in lines)  # nothing without its help


def test_defaults_without_a_config_and_bad_input_is_one_line(capsys, tmp_path):
    assert cli.main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == to_dict(load_config(None, []))
    assert cli.main(["config", "show", DEMO, "distill.K=5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'K'" in err
