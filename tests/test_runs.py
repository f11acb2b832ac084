"""Run folders: resumable JSONL survives torn writes and duplicates; stages skip, force and detect drift."""

import json

import pytest

from charter.runs import RowLog, Stage, read_jsonl


def test_rowlog_drops_torn_tail_and_duplicates(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 2}\n{"id": "a", "v": 9}\n{"id": "c", "v"')
    log = RowLog(p)
    assert sorted(log.rows) == ["a", "b"] and log.rows["a"]["v"] == 1
    log.append([{"id": "b", "v": 5}, {"id": "c", "v": 3}])
    rows = read_jsonl(p)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert p.read_text().endswith("\n")


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(p)


def test_stage_skip_force_and_config_drift(tmp_path):
    s = Stage(tmp_path, "x", {"a": 1})
    assert s.begin()
    s.finish({"rows": 3})
    assert json.loads(s.manifest_path.read_text())["counts"] == {"rows": 3}
    assert not Stage(tmp_path, "x", {"a": 1}).begin()  # finished: skipped
    with pytest.raises(RuntimeError, match="different config"):
        Stage(tmp_path, "x", {"a": 2}).begin()
    assert Stage(tmp_path, "x", {"a": 2}).begin(force=True)  # --force replaces it
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_a_redone_input_makes_the_next_stage_stale(tmp_path, caplog):
    up = Stage(tmp_path, "up", {"u": 1})
    assert up.begin()
    (up.dir / "data.jsonl").write_text('{"id": 1}\n')
    up.finish({}, outputs=[up.dir / "data.jsonl"])
    down = Stage.after(tmp_path, "down", {"d": 1}, ["up"])
    assert down.begin()
    (down.dir / "rows.jsonl").write_text("partial\n")
    down.finish({})
    first = down.identity()
    assert not Stage.after(tmp_path, "down", {"d": 1}, ["up"]).begin()  # nothing changed: skipped

    # Upstream forced and redone with the same bytes: same identity, downstream kept.
    up = Stage(tmp_path, "up", {"u": 1})
    assert up.begin(force=True)
    (up.dir / "data.jsonl").write_text('{"id": 1}\n')
    up.finish({}, outputs=[up.dir / "data.jsonl"])
    assert not Stage.after(tmp_path, "down", {"d": 1}, ["up"]).begin()

    # Redone with different output: downstream is stale, cleared and redone (no "different config" error).
    up = Stage(tmp_path, "up", {"u": 1})
    assert up.begin(force=True)
    (up.dir / "data.jsonl").write_text('{"id": 2}\n')
    up.finish({}, outputs=[up.dir / "data.jsonl"])
    down = Stage.after(tmp_path, "down", {"d": 1}, ["up"])
    with caplog.at_level("WARNING", logger="charter.runs"):
        assert down.begin()
    assert "inputs changed" in caplog.text and "up" in caplog.text
    assert not (down.dir / "rows.jsonl").exists() and not down.done()
    down.finish({})
    second = down.identity()
    assert second != first
    # A trained model (no output files to hash) gets a new identity every time it is made.
    again = Stage.after(tmp_path, "down", {"d": 1}, ["up"])
    assert again.begin(force=True)
    again.finish({})
    assert again.identity() not in (first, second)


def test_a_stale_partial_stage_does_not_resume_old_rows(tmp_path):
    up = Stage(tmp_path, "up", {})
    up.begin()
    up.finish({})
    down = Stage.after(tmp_path, "down", {}, ["up"])
    down.begin()
    (down.dir / "rows.jsonl").write_text('{"id": "a"}\n')  # crashed mid-way, no manifest
    up = Stage(tmp_path, "up", {})
    up.begin(force=True)
    up.finish({})
    assert Stage.after(tmp_path, "down", {}, ["up"]).begin()
    assert not (tmp_path / "down" / "rows.jsonl").exists()


def test_a_resumed_stage_reports_the_wall_time_of_every_invocation(tmp_path):
    import os
    import time

    first = Stage(tmp_path, "x", {"a": 1})
    assert first.begin()
    rows = first.dir / "rows.jsonl"
    rows.write_text('{"id": "a"}\n')  # the first invocation wrote a row 100 s after it began, then was killed
    os.utime(rows, (first.started + 100, first.started + 100))
    second = Stage(tmp_path, "x", {"a": 1})
    assert second.begin()
    time.sleep(0.05)
    m = second.finish({})
    assert m["invocations"] == 2 and 0.05 <= m["seconds"] < 5
    assert m["seconds_total"] == pytest.approx(100 + m["seconds"], abs=0.05)
    # One uninterrupted invocation: the total is its own time.
    one = Stage(tmp_path, "y", {})
    one.begin()
    m = one.finish({})
    assert m["invocations"] == 1 and m["seconds_total"] == m["seconds"]


class _Redo(Exception):
    def __init__(self, stage):
        self.stage = stage


def test_forcing_a_stage_reruns_every_stage_after_it(monkeypatch, charter_home):
    """The pipeline's real stage wiring, each stage's work replaced by an instant finish: `charter distill
    --force` then `charter train` redoes DPO, introspection, SFT and merge, and evaluations see new models."""
    from charter.config import load_config
    from charter.eval import conditions
    from charter.stages import distill, merge, sft, train

    cfg = load_config(None, ["name=chain", "expand.enabled=false"])
    redone = []
    begin = Stage.begin

    def fake_begin(self, force=False):
        if begin(self, force):
            raise _Redo(self)
        return False

    monkeypatch.setattr(Stage, "begin", fake_begin)

    def run(mod, force=False):
        del redone[:]
        while True:
            try:
                name = mod.__name__.rsplit(".", 1)[1]  # `charter NAME`: the orchestrator runs what is missing
                return train.run(cfg, until=name, force={name} if force else False, report=None)
            except _Redo as e:  # the stage would do its work now: stand in for it
                redone.append(e.stage.name)
                if e.stage.name in ("dpo", "merge"):
                    (e.stage.dir / "model").mkdir()
                    (e.stage.dir / "model" / "config.json").write_text("{}")
                e.stage.finish({})
                force = False

    run(merge)
    assert redone == ["distill", "dpo", "introspect", "sft", "merge"]
    run(merge)
    assert redone == []  # resumed: nothing to do
    # An edited constitution is an input too: everything made from it is redone.
    from charter import constitution as const

    persona = charter_home / "kind.yaml"
    persona.write_text(const.load("loving").to_yaml().replace("name: loving", "name: kind"))
    cfg = load_config(None, ["name=chain2", f"persona={persona}"])
    run(merge)
    assert redone == ["expand", "distill", "dpo", "introspect", "sft", "merge"]
    persona.write_text(persona.read_text().replace("prompts:", "prompts:\n  - A brand new seed prompt?", 1))
    run(merge)
    assert redone == ["expand", "distill", "dpo", "introspect", "sft", "merge"]
    cfg = load_config(None, ["name=chain", "expand.enabled=false"])
    trained, distilled = conditions.identity(cfg, "trained"), conditions.identity(cfg, "distilled")

    run(distill, force=True)
    assert redone == ["distill"]
    run(merge)  # charter train
    assert redone == ["dpo", "introspect", "sft", "merge"]
    assert conditions.identity(cfg, "trained") != trained and conditions.identity(cfg, "distilled") != distilled

    run(sft, force=True)
    assert redone == ["sft"]
    run(merge)
    assert redone == ["merge"]
    # An explicit config change is still an error, not a silent redo.
    cfg = load_config(None, ["name=chain", "expand.enabled=false", "sft.max_examples=3"])
    with pytest.raises(RuntimeError, match="different config"):
        run(merge)


def test_reusable_keeps_a_finished_output_that_still_holds_and_resumes_one_that_does_not(tmp_path):
    from charter.runs import reusable

    stage = Stage(tmp_path, "eval-x", {"a": 1})
    assert reusable(stage, False, lambda m: True) is None  # nothing finished yet
    stage.begin()
    (stage.dir / "rows.jsonl").write_text('{"id": 1}\n')
    stage.finish({"n": 1}, models={"trained": "id1"})
    lines = []
    assert reusable(stage, False, lambda m: m["models"] == {"trained": "id1"}, lines.append)["counts"] == {"n": 1}
    assert lines == [f"eval-x: already done (--force to redo): {stage.dir}"]
    assert reusable(stage, True, lambda m: True) is None and stage.done()  # --force: the caller's begin() clears
    assert reusable(stage, False, lambda m: m["models"] == {"trained": "id2"}) is None
    assert not stage.done() and (stage.dir / "rows.jsonl").exists()  # resumed: the logs are kept


def test_speed_knobs_do_not_make_a_finished_stage_stale(charter_home):
    """Tuning batch size, chunk size, concurrency, retries or timeouts on a live run keeps finished stages (and
    what was made from them); a knob that changes the data, like a temperature, is still a config change."""
    from charter.config import load_config
    from charter.eval import conditions
    from charter.stages import distill

    def stage(*overrides):
        cfg = load_config(None, ["name=knobs", "expand.enabled=false", *overrides])
        return Stage(charter_home / "runs" / "knobs", "distill", distill.stage_config(cfg)), cfg

    first, cfg = stage("student.batch_size=4")
    assert first.begin()
    first.finish({"pairs": 1})
    done = first.identity()
    for knob in ("student.batch_size=64", "distill.chunk_size=1024", "distill.teacher.max_concurrency=32",
                 "distill.teacher.max_retries=0", "distill.teacher.timeout=30"):
        again, tuned = stage(knob)
        assert not again.begin(), knob  # finished: skipped, neither an error nor redone
        assert again.identity() == done
        assert conditions.identity(tuned, "base") == conditions.identity(cfg, "base"), knob
    with pytest.raises(RuntimeError, match="different config"):
        stage("distill.teacher_sampling.temperature=0.3")[0].begin()
    assert conditions.identity(load_config(None, ["name=knobs", "student.dtype=float32"]), "base") != \
        conditions.identity(cfg, "base")


def test_training_batch_size_is_part_of_the_stage_identity(charter_home):
    """dpo.batch_size / sft.batch_size are the effective training batch, not a speed knob: a finished DPO stage
    made with 16 is not reused when 64 is asked for (a bare-name match on 'batch_size' used to erase them)."""
    from charter.config import load_config
    from charter.stages import dpo, sft

    for module, section in ((dpo, "dpo"), (sft, "sft")):
        def stage(*overrides):
            cfg = load_config(None, ["name=batch", *overrides])
            return Stage(charter_home / "runs" / "batch", section, module.stage_config(cfg))

        first = stage(f"{section}.batch_size=16")
        assert first.begin()
        first.finish({"steps": 1})
        assert not stage(f"{section}.batch_size=16", f"{section}.checkpoint_steps=7").begin()  # cadence: no
        with pytest.raises(RuntimeError, match="different config"):
            stage(f"{section}.batch_size=64").begin()
        with pytest.raises(RuntimeError, match="different config"):
            stage().begin()  # unset (the default effective batch) is not 16 either


def test_identity_rules_are_declared_on_the_fields():
    """Identity is declared on each field (``setting(identity=...)``); a model spec's speed knobs once, on
    ModelSpec, for every place a model spec appears."""
    import dataclasses
    import typing

    from charter.config import DPOStageConfig, ModelSpec, RunConfig, SFTStageConfig, _dataclass_type
    from charter.config.fields import AsBefore, PrefixCache, Speed, identity_of

    def rules(cls):
        return {f.name: identity_of(f) for f in dataclasses.fields(cls)}

    def sections(cls):
        yield cls
        for tp in typing.get_type_hints(cls).values():
            if _dataclass_type(tp) is not None:
                yield from sections(_dataclass_type(tp))

    for cls in set(sections(RunConfig)):
        for name, rule in rules(cls).items():
            assert rule in (True, False) or isinstance(rule, (Speed, AsBefore, PrefixCache)), (cls.__name__, name)

    model = rules(ModelSpec)
    assert model["prefix_cache"] == PrefixCache()
    assert [model[k] for k in ("batch_size", "max_concurrency", "max_retries", "timeout")] == [
        Speed(32), Speed(8), Speed(5), Speed(300.0)]
    assert rules(DPOStageConfig)["batch_size"] == AsBefore(None) == rules(SFTStageConfig)["batch_size"]
    assert rules(DPOStageConfig)["checkpoint_steps"] is False


def test_prefix_cache_counts_where_it_changes_outputs(charter_home):
    """Reusing a prefix's KV cache is exact in float32 (a speed knob there) but changes bf16 outputs, so in
    bf16/fp16 prefix_cache is part of the identity of a stage and of an evaluation's condition."""
    from charter.config import load_config
    from charter.eval import conditions
    from charter.stages import distill

    def stage(dtype, *overrides):
        cfg = load_config(None, [f"name=pc-{dtype}", "expand.enabled=false", f"student.dtype={dtype}",
                                 f"distill.teacher.dtype={dtype}", *overrides])
        return Stage(charter_home / "runs" / f"pc-{dtype}", "distill", distill.stage_config(cfg)), cfg

    for dtype in ("float32", "bfloat16"):
        first, cfg = stage(dtype)
        assert first.begin()
        first.finish({"pairs": 1})
        tuned = stage(dtype, "student.prefix_cache=false", "distill.teacher.prefix_cache=false")
        if dtype == "float32":
            assert not tuned[0].begin()
            assert conditions.identity(tuned[1], "base") == conditions.identity(cfg, "base")
        else:
            with pytest.raises(RuntimeError, match="different config"):
                tuned[0].begin()
            assert conditions.identity(tuned[1], "base") != conditions.identity(cfg, "base")
    # an API model runs elsewhere: the knob does nothing here
    from charter.runs import identity_hash

    api = ["distill.teacher.backend=openai", "distill.teacher.base_url=http://127.0.0.1:9/v1",
           "distill.teacher.dtype=bfloat16"]
    assert identity_hash(distill.stage_config(load_config(None, ["expand.enabled=false", *api]))) == \
        identity_hash(distill.stage_config(load_config(None, ["expand.enabled=false", *api,
                                                              "distill.teacher.prefix_cache=false"])))


def test_stage_folders_hashed_with_their_speed_knobs_still_match(tmp_path):
    """A stage folder written before speed knobs left the hash (its config.json hash covers batch_size)."""
    from charter.runs import config_hash

    old = {"student": {"model": "embedded", "batch_size": 4}, "seed": 1}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.json").write_text(json.dumps({"hash": config_hash(old), "config": old, "inputs": {}}))
    assert Stage(tmp_path, "s", {"student": {"model": "embedded", "batch_size": 16}, "seed": 1}).begin()
    with pytest.raises(RuntimeError, match="different config"):
        Stage(tmp_path, "s", {"student": {"model": "other", "batch_size": 4}, "seed": 1}).begin()
