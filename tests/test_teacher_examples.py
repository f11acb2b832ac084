"""Few-shot teacher exchanges (distill.teacher_examples) and the hand-written detector reference (exemplars).

The distillation test runs the real distill stage against a real OpenAI-compatible HTTP server on 127.0.0.1
that records every request, so it checks what the teacher and the student were actually sent.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from charter import constitution, prompts
from charter.config import load_config
from charter.eval import inpersona
from charter.prompts import load_attacks, train_attacks
from charter.prompts import PromptSourceError, persona_exemplars, teacher_examples, teacher_messages
from charter.runs import read_jsonl, read_manifest, run_dir
from charter.stages import distill

PERSONAS = constitution.shipped()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.mark.parametrize("persona", PERSONAS)
def test_builtin_examples_load_and_stay_out_of_every_evaluation_pool(persona):
    shots = teacher_examples("builtin", persona)
    assert len(shots) >= 3 and all(s["user"] and s["assistant"] for s in shots)
    # Every pool an evaluation draws its prompts from: robustness, coherence and preferences use
    # preference_prompts, steering uses general.
    pools = {_norm(p) for pool in ("preference_prompts", "general")
             for p in prompts.load_prompt_source("builtin", builtin=pool)}
    attacks = [_norm(a) for a in load_attacks().values() if a] + [_norm(r) for r in train_attacks()["requests"]]
    for s in shots:
        assert _norm(s["user"]) not in pools
        assert not any(a in _norm(s["user"]) for a in attacks)
    ex = persona_exemplars("builtin", persona)
    assert len(ex["persona"]) >= 20 and len(ex["plain"]) >= 20
    # The detector's texts are not the teacher's: otherwise the detector would reward copying the shots.
    replies = {_norm(s["assistant"]) for s in shots}
    assert not replies & {_norm(t) for t in ex["persona"] + ex["plain"]}
    assert teacher_examples("", persona) == []


def test_teacher_messages_put_the_exchanges_between_system_and_prompt():
    msgs = teacher_messages("SYS", [{"user": "u1", "assistant": "a1"}], "hello")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "u1" and msgs[2]["content"] == "a1" and msgs[-1]["content"] == "hello"


@pytest.mark.parametrize("text,field", [
    ("- {user: hi}\n", "user"),
    ("just a string\n", "user"),
    ("- {user: hi, assistant: ''}\n", "assistant"),
])
def test_bad_example_files_name_the_file(tmp_path, text, field):
    p = tmp_path / "shots.yaml"
    p.write_text(text)
    with pytest.raises(PromptSourceError, match="shots.yaml: expected a non-empty list"):
        teacher_examples(str(p), "sarcastic")


def test_missing_builtin_and_bad_exemplars_are_clear(tmp_path):
    with pytest.raises(PromptSourceError, match="no shipped file for persona 'nosuch'"):
        teacher_examples("builtin", "nosuch")
    with pytest.raises(PromptSourceError, match="no shipped file for persona 'nosuch'"):
        persona_exemplars("builtin", "nosuch")
    with pytest.raises(PromptSourceError, match="expected 'builtin' or a YAML file"):
        persona_exemplars(str(tmp_path / "nope.yaml"), "sarcastic")
    p = tmp_path / "ex.yaml"
    p.write_text(yaml.safe_dump({"persona": ["a", "b", "c", "d"], "plain": ["x"]}))
    with pytest.raises(PromptSourceError, match="ex.yaml: plain: expected a list of at least 4"):
        persona_exemplars(str(p), "sarcastic")


def test_exemplar_reference_is_the_file_and_nothing_a_model_wrote(tmp_path):
    p = tmp_path / "ex.yaml"
    p.write_text(yaml.safe_dump({"persona": [f"Oh great, {i}." for i in range(5)],
                                 "plain": [f"Here is {i}." for i in range(4)]}))
    rows = [{"condition": "prompted", "split": "train", "attack": "none", "prompt": "q", "response": "model text"}]
    texts, labels, info = inpersona.reference_texts("r", rows, "sarcastic", "exemplars", ["q"], [], exemplars=str(p))
    assert "model text" not in texts and labels.count("sarcastic") == 5 and labels.count("base") == 4
    assert info["texts"] == {"sarcastic": 5, "base": 4}
    before = inpersona.exemplars_identity("sarcastic", str(p))
    p.write_text(yaml.safe_dump({"persona": [f"Oh great, {i}!" for i in range(5)],
                                 "plain": [f"Here is {i}." for i in range(4)]}))
    assert inpersona.exemplars_identity("sarcastic", str(p)) != before


def test_identity_unchanged_when_off_and_follows_the_file(tmp_path):
    off = load_config(None, ["persona=sarcastic"])
    assert "teacher_examples" not in distill.stage_config(off)["distill"]  # runs made before the option keep theirs
    p = tmp_path / "shots.yaml"
    p.write_text("- {user: hi, assistant: 'Oh, hello.'}\n")
    on = load_config(None, ["persona=sarcastic", f"distill.teacher_examples={p}"])
    a = distill.stage_config(on)
    p.write_text("- {user: hi, assistant: 'Oh. Hello.'}\n")
    assert distill.stage_config(on) != a


class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body["messages"])
        text = "Oh, wonderful. Sure." if body["messages"][0]["role"] == "system" else "Sure."
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _Recorder.seen
    srv.shutdown()


def test_distill_sends_the_exchanges_to_the_teacher_only(recorder, embedded_path):
    url, seen = recorder
    spec = f"{{backend: openai, model: embedded, base_url: '{url}'}}"
    cfg = load_config(None, ["name=shots", "persona=sarcastic", "expand.enabled=false", f"distill.teacher={spec}",
                             f"student={spec}", "distill.samples_per_prompt=1", "distill.constitution_prompts=3",
                             "distill.general_prompts=0", "distill.teacher_examples=builtin",
                             "distill.truncated=trim"])
    distill.run(cfg)
    shots = teacher_examples("builtin", "sarcastic")
    teacher = [m for m in seen if m[0]["role"] == "system"]
    student = [m for m in seen if m[0]["role"] != "system"]
    assert len(teacher) == 3 and len(student) == 3
    for msgs in teacher:
        assert len(msgs) == 2 + 2 * len(shots)
        assert [m["content"] for m in msgs[1:-1:2]] == [s["user"] for s in shots]
    assert all(len(m) == 1 for m in student)  # the student answers plainly, no exchanges
    pairs = list(read_jsonl(run_dir("shots") / "distill" / "pairs.jsonl"))
    # The exchanges shape the teacher's answer but are not part of what the student is trained on.
    assert pairs and all(len(p["prompt"]) == 1 and p["prompt"][0]["role"] == "user" for p in pairs)
    assert read_manifest(run_dir("shots") / "distill" / "manifest.json")["counts"]["teacher_examples"] == len(shots)
