"""Per-field metadata (``charter.config.fields.setting``): a field's check, identity rule and help, declared
once on the field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from charter.config import ConfigError, RunConfig, Sampling, check_fields, load_config, validate
from charter.config.fields import POSITIVE, SHARE, AsBefore, Speed, number, setting
from charter.config.identity import identity_view, recorded


@dataclass
class Widget:
    """A section added later: its checks and identity come with its fields, nothing else is edited."""

    count: int = setting(3, check=POSITIVE, help="widgets per batch")
    share: float | None = setting(None, check=SHARE, help="a share, unset by default")
    cadence: int = setting(10, identity=False, help="how often to save; never part of what is made")
    workers: int = setting(4, check=POSITIVE, identity=Speed(4), help="threads; a speed knob")
    mode: str = setting("plain", identity=AsBefore("plain"), help="added after runs existed")
    tags: list = setting(["a"], help="a mutable default")
    sampling: Sampling = setting(Sampling(max_tokens=16), help="nested section")


@dataclass
class BigRun(RunConfig):
    widget: Widget = setting(Widget(), help="the new section")


@pytest.mark.parametrize("override,message", [
    ("distill.chunk_size=0", "config.distill.chunk_size: expected a number > 0, got 0"),
    ("student.max_retries=-1", "config.student.max_retries: expected a number >= 0, got -1"),
    ("introspect.model={batch_size: 0}", "config.introspect.model.batch_size: expected a number > 0, got 0"),
    ("rl.judge={timeout: 0}", "config.rl.judge.timeout: expected a number > 0, got 0.0"),
    ("coherence.judge={max_concurrency: 0}", "config.coherence.judge.max_concurrency: expected a number > 0, got 0"),
    ("distill.student_sampling.top_p=0", "config.distill.student_sampling.top_p: expected 0 < top_p <= 1, got 0.0"),
    ("expand.max_overlap=1.5", "config.expand.max_overlap: expected 0 <= x <= 1, got 1.5"),
    ("robustness.heldout_fraction=1", "config.robustness.heldout_fraction: expected 0 < x < 1, got 1.0"),
    ("sft.eval_fraction=1", "config.sft.eval_fraction: expected 0 <= x < 1, got 1.0"),
    ("introspect.turns=1", "config.introspect.turns: expected a number >= 2, got 1"),
    ("seed=-1", "config.seed: expected an integer 0 <= seed < 2**32, got -1"),
    ("steering.layers=[0.5, 0.2]", "config.steering.layers: expected [start, end) with 0 <= start < end <= 1"),
    ("steering.coefficients=[]", "config.steering.coefficients: expected a non-empty list of numbers, got []"),
    ("capabilities.tasks=[':3']", "config.capabilities.tasks: expected entries 'name:fewshot'"),
    ("rl.rewards={persona: 0}", "config.rl.rewards: expected weights for persona / judge / coherence, >= 0, not all 0"),
])
def test_a_field_check_names_the_path_and_what_was_expected(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


def test_unset_optional_fields_are_not_checked():
    cfg = load_config(None, ["expand.max_traits=null", "distill.general_prompts=null"])
    assert cfg.expand.max_traits is None


def test_number_reads_like_the_range():
    assert number(0, 1, hi_open=True).expected == "0 <= x < 1"
    assert number(2).expected == "a number >= 2"
    assert not POSITIVE(True) and not POSITIVE(float("nan")) and POSITIVE(0.5)


def test_a_new_section_gets_its_checks_without_editing_checks():
    check_fields(Widget(), "cfg.widget")
    with pytest.raises(ConfigError, match=r"^cfg\.widget\.count: expected a number > 0, got 0$"):
        check_fields(Widget(count=0), "cfg.widget")
    with pytest.raises(ConfigError, match=r"^cfg\.widget\.sampling\.top_p: expected 0 < top_p <= 1, got 0$"):
        check_fields(Widget(sampling=Sampling(top_p=0)), "cfg.widget")
    with pytest.raises(ConfigError, match=r"^config\.widget\.share: expected 0 <= x <= 1, got 2$"):
        validate(BigRun(widget=Widget(share=2)))  # the whole run config's validation reaches it too


def test_setting_keeps_help_and_copies_mutable_defaults():
    from charter.config_show import describe

    a, b = Widget(), Widget()
    assert a.tags == ["a"] and a.tags is not b.tags and a.sampling is not b.sampling
    assert a.sampling.max_tokens == 16
    fields = {f.name: f for f in dataclasses.fields(Widget)}
    assert fields["count"].metadata["help"] == "widgets per batch"
    assert describe(Widget())[0].startswith("count: 3") and describe(Widget())[0].endswith("# widgets per batch")


def test_identity_rules_of_a_new_section(monkeypatch):
    from charter.config import identity

    monkeypatch.setattr(identity, "_root", lambda: BigRun)  # as if RunConfig had the section
    section = dataclasses.asdict(Widget(cadence=99, workers=16))
    view = identity_view({"widget": section})["widget"]
    assert "cadence" not in view  # identity=False: never counts
    assert view["workers"] == 4  # Speed(4): seen at its fixed value
    assert "mode" not in view  # AsBefore: left out at its "as before" value...
    assert identity_view({"widget": {**section, "mode": "fancy"}})["widget"]["mode"] == "fancy"  # ...counted off it
    assert identity_view(section, at="widget") == view

    kept = recorded(Widget(cadence=99, workers=16))
    assert "cadence" not in kept and "mode" not in kept and kept["workers"] == 16  # the record keeps the value used
    assert recorded(Widget(mode="fancy"))["mode"] == "fancy"


def test_identity_of_shipped_fields():
    """Speed knobs and never-counting fields leave the hash alone; fields that count change it."""
    from charter.eval import drift, robustness
    from charter.runs import identity_hash
    from charter.stages import distill, dpo

    def ident(module, *overrides):
        return identity_hash(module.stage_config(load_config(None, list(overrides))))

    assert ident(distill, "distill.chunk_size=3", "distill.teacher.batch_size=2") == ident(distill)
    assert ident(distill, "distill.samples_per_prompt=2") != ident(distill)
    assert ident(dpo, "dpo.checkpoint_steps=7") == ident(dpo)
    assert ident(dpo, "dpo.eval_fraction=0.0") == ident(dpo) != ident(dpo, "dpo.eval_fraction=0.2")
    assert ident(robustness, "robustness.conditions=[base]", "robustness.chunk_size=5") == ident(robustness)
    assert ident(robustness, "robustness.prompts=40") != ident(robustness)
    assert ident(drift, "drift.cap_level=0.9", "drift.chunk_size=5") == ident(drift)
    assert "cap_level" not in drift.stage_config(load_config(None))["drift"]


def test_a_standalone_model_spec_is_viewed_as_a_model_spec():
    from charter.config import ModelSpec

    spec = dataclasses.asdict(ModelSpec(batch_size=2, timeout=1.0))
    assert identity_view({"spec": spec})["spec"] == dataclasses.asdict(ModelSpec())


def test_condition_lists_are_checked_against_the_registry(monkeypatch):
    """A condition is any label the registry knows, so a plugin stage's model can be named in every evaluation's
    condition list; an unknown one is an error spelling out the known ones; drift alone also knows 'capped'."""
    from charter import registry

    def load(*overrides):
        return load_config(None, ["name=conds", *overrides])

    with pytest.raises(ConfigError, match=r"config.robustness.conditions\[1\]: expected one of base \| "
                                          r"prompted \| .*trained.*, got 'toy-model'"):
        load("robustness.conditions=[base, toy-model]")
    with pytest.raises(ConfigError, match="config.formats.conditions\\[0\\]: .*got 'capped'"):
        load("formats.conditions=[capped]")
    assert load("drift.conditions=[base, capped]").drift.conditions == ["base", "capped"]
    with pytest.raises(ConfigError, match=r"config.drift.cap_model: expected base \| distilled \| trained"):
        load("drift.cap_model=prompted")
    toy = registry.Stage("toymodel", "a stage making a model", lambda cfg, force=False: None, lambda m: "",
                         condition="toy-model")
    registry.load()
    monkeypatch.setitem(registry._STAGES, "toymodel", toy)
    cfg = load("robustness.conditions=[base, toy-model]", "drift.cap_model=toy-model")
    assert cfg.robustness.conditions == ["base", "toy-model"] and cfg.drift.cap_model == "toy-model"
