"""Introspection transcripts: cut-off answers are dropped or trimmed per turn, never trained on as finished."""

import pytest

from charter.backends import Completion
from charter.config import load_config
from charter.runs import RowLog
from charter.stages import introspect


def _cfg(mode: str, turns: int = 3):
    return load_config(None, [f"introspect.truncated={mode}", f"introspect.turns={turns}",
                              "introspect.free_conversations=2", "introspect.leading_conversations=0",
                              "introspect.reflection_samples=1"])


def _row(conv, k, text, finished=True, error=None):
    return {"id": f"{conv}-t{k}", "conv": conv, "turn": k, "response": text, "finished": finished,
            "tokens": 3, "error": error}


def _rows(tmp_path, rows, name):
    log = RowLog(tmp_path / name)
    log.append(rows)
    return log


@pytest.mark.parametrize("mode", ["drop", "trim"])
def test_a_cut_off_turn_is_never_kept_as_finished(tmp_path, mode):
    cfg = _cfg(mode)
    convs = introspect.conversations(cfg)
    inter = _rows(tmp_path, [
        _row("free0", 0, "Hello, dear friend."), _row("free0", 1, "I love that. And then I w", finished=False),
        _row("free0", 2, "Yes, gladly."),
        _row("free1", 0, "no sentence end here", finished=False), _row("free1", 1, "Hi."), _row("free1", 2, "Ok."),
    ], "inter.jsonl")
    refl = _rows(tmp_path, [
        {"id": "r0-0", "prompt": "Who are you?", "response": "I am kind. I also lo", "finished": False, "error": None},
        {"id": "r1-0", "prompt": "What now?", "response": "Rest.", "finished": True, "error": None}], "refl.jsonl")
    rows, notes = introspect.assemble(cfg, refl, inter, convs, "SmolLM")
    by_id = {r["id"]: r for r in rows}
    texts = [m["content"] for r in rows for m in r["messages"]]
    assert not any("And then" in t or "I also lo" in t or "no sentence end" in t for t in texts)
    assert "free1" not in by_id  # its first turn was cut off with no complete sentence
    assert notes["conversation_without_a_usable_turn"] == 1
    if mode == "drop":
        # free0 ends at turn 0, A's own turn: [system, user greeting_1, assistant turn 0].
        assert [m["role"] for m in by_id["free0"]["messages"]] == ["system", "user", "assistant"]
        assert by_id["free0"]["messages"][-1]["content"] == "Hello, dear friend."
        assert by_id["free0"]["turns"] == 1
        assert notes["interaction_turn_truncated"] == 2 and notes["conversation_ended_early"] == 1
        assert "r0-0" not in by_id and notes["reflection_truncated"] == 1
    else:
        msgs = by_id["free0"]["messages"]
        assert [m["content"] for m in msgs[-3:]] == ["Hello, dear friend.", "I love that.", "Yes, gladly."]
        assert msgs[-1]["role"] == "assistant" and by_id["free0"]["turns"] == 3
        assert notes["interaction_turns_trimmed_kept"] == 1 and notes["interaction_turn_truncated"] == 1
        assert by_id["r0-0"]["messages"][-1]["content"] == "I am kind."
        assert notes["reflection_trimmed_kept"] == 1


class _Tok:
    def apply_chat_template(self, msgs, tokenize=True, add_generation_prompt=False, return_dict=True):
        return {"input_ids": " ".join(m["content"] for m in msgs).split()}


class _Script:
    """Answers each generate() call with the next scripted list, recording the chats it was given."""

    def __init__(self, calls):
        self.calls, self.seen = list(calls), []

    def generate(self, chats, sampling, prefills=None, seed=0, progress=None):
        self.seen.append(chats)
        return self.calls.pop(0)


@pytest.mark.parametrize("mode", ["drop", "trim"])
def test_generation_stops_a_conversation_at_an_unusable_turn(tmp_path, mode):
    cfg = _cfg(mode)
    convs = introspect.conversations(cfg)
    systems = {"free": "sys", "leading": "sys"}
    turn0 = [Completion("Hello friend.", True), Completion("no end here", False)]
    turn1 = [Completion("I think so. And then", False)]
    script = _Script([turn0, turn1] + ([[Completion("Yes.", True)]] if mode == "trim" else []))
    inter = RowLog(tmp_path / "inter.jsonl")
    introspect.self_interaction(cfg, inter, convs, systems, script, _Tok())
    assert not script.calls  # every scripted call made, and no more
    assert [len(c) for c in script.seen] == [2, 1] + ([1] if mode == "trim" else [])  # free1 never continued
    if mode == "trim":
        last = script.seen[2][0]
        assert last[-1]["content"] == "I think so." and last[-2]["content"] == "Hello friend."
    rows, notes = introspect.assemble(cfg, RowLog(tmp_path / "r.jsonl"), inter, convs, "SmolLM")
    assert [r["turns"] for r in rows] == ([1] if mode == "drop" else [3])


def test_an_openai_student_is_refused_unless_a_served_distilled_model_is_named(charter_home):
    from charter.stages import train

    cfg = load_config(None, ["name=srv", "student.backend=openai", "student.model=qwen-served",
                             "student.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(ValueError, match="introspect.model") as e:
        introspect.distilled_spec(cfg)
    assert "\n" not in str(e.value) and str(charter_home / "runs" / "srv" / "dpo" / "model") in str(e.value)
    with pytest.raises(ValueError, match="introspect.model"):
        train.run(cfg, report=lambda line: None)  # refused before any stage runs
    assert not (charter_home / "runs" / "srv").exists()

    served = load_config(None, ["student.backend=openai", "student.model=Qwen/Qwen2.5-7B-Instruct",
                                "introspect.model.backend=openai", "introspect.model.model=loving-dpo",
                                "introspect.model.base_url=http://127.0.0.1:8001/v1"])
    spec = introspect.distilled_spec(served)
    assert (spec.backend, spec.model, spec.base_url) == ("openai", "loving-dpo", "http://127.0.0.1:8001/v1")
    assert spec.name == "Qwen"  # the student's self-name, not one derived from the served name
    local = load_config(None, ["name=loc"])
    assert introspect.distilled_spec(local).model == str(charter_home / "runs" / "loc" / "dpo" / "model")
