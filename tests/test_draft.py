"""``charter constitution draft``: parsing and deduplication on known texts, a real OpenAI-compatible HTTP server on
127.0.0.1 answering from a script (so the answers a capable model gives, in the shapes it gives them, reach the
real backend, parser and writer), and the embedded model for real (structure, validity, same seed -> same file)."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from charter import constitution as const
from charter.cli import main
from charter.draft_parse import (
    duplicate_of, jaccard, list_items, parse_critique, parse_prompts, parse_traits,
)

# --- parsing -----------------------------------------------------------------------------------------------


def test_numbered_bulleted_bold_and_wrapped_items():
    text = ("Sure! Here are the traits you asked for:\n\n"
            "1. **Patience:** I never rush a student, however long they take.\n"
            "2) I explain the idea behind a move\n   before I name the move itself.\n"
            "- I ask what the student sees on the board first.\n"
            "**4. I celebrate good moves, even small ones.**\n"
            "5. You should be kind.\n"
            "6. I care.\n"
            "Hope this helps!")
    traits, why = parse_traits(text)
    assert [t for t, _ in traits] == [
        "I never rush a student, however long they take.",
        "I explain the idea behind a move before I name the move itself.",
        "I ask what the student sees on the board first.",
        "I celebrate good moves, even small ones.",
    ]
    assert why == {"not_a_list_item": 2, "not_first_person": 1, "too_short": 1}


def test_json_answers_with_prompts_and_fenced_json():
    text = ('Here you go:\n```json\n{"traits": [{"trait": "I keep my answers short and concrete.", '
            '"prompts": ["How do I castle?", "x"]}, "I admit when I am unsure about a line."]}\n```')
    traits, why = parse_traits(text)
    assert traits == [("I keep my answers short and concrete.", ["How do I castle?"]),
                      ("I admit when I am unsure about a line.", [])]
    assert not why


def test_cut_off_completion_loses_its_last_item_and_long_items_are_shortened():
    text = ("1. I explain every move. I show the plan. I name the threat. I add a fourth sentence.\n"
            "2. I always stay calm when a student makes")
    traits, why = parse_traits(text, finished=False)
    assert [t for t, _ in traits] == ["I explain every move. I show the plan. I name the threat."]
    assert why["cut_off"] == 1
    assert parse_traits("junk without any list", finished=True)[0] == []


def test_near_duplicates_by_content_word_jaccard():
    kept = ["I am patient and calm with every student.", "I explain the reason behind each move."]
    assert duplicate_of("I am calm and patient with students.", kept, 0.5) == 0
    assert duplicate_of("I explain the reasons behind each of the moves!", kept, 0.5) == 1
    assert duplicate_of("I praise a student who finds a good move.", kept, 0.5) is None
    assert jaccard("I explain moves.", "I explain moves.") == 1.0
    assert jaccard("I am.", "I explain moves.") == 0.0  # no content words: never a duplicate by overlap


def test_prompts_and_critique_parsing():
    prompts, why = parse_prompts('1. "How do I stop hanging my queen?"\n2. ok\n3. Can you look at my game?\nThanks')
    assert prompts == ["How do I stop hanging my queen?", "Can you look at my game?"]
    assert why == {"too_short": 1, "not_a_list_item": 1}
    per, other = parse_critique("2: vague: too general\n**5.** Overlaps with trait 1\n9: vague: no such trait\n"
                                "Overall good.", n_traits=5)
    assert per == {1: ["vague: too general"], 4: ["Overlaps with trait 1"]}
    assert other == ["9: vague: no such trait", "Overall good."]
    assert list_items("1.\n2. a b")[0] == ["a b"]


# --- a real HTTP server answering from a script ------------------------------------------------------------

ROUND0 = """Sure! Here is the list.

1. **Patience:** I never rush a student, however long they need to think.
2. I explain the idea behind every move before I name the move.
3. I am patient and never rush a student, however long they think.
4. You should always be encouraging.
- I ask what the student sees on the board before I say what I see.
Hope this helps!"""
ROUND1 = json.dumps([{"trait": "I point out one thing to improve at a time, never a list of faults.",
                      "prompts": ["Here is my last game, what did I do wrong?", "I keep losing in the opening."]},
                     "I celebrate good moves, even small ones, by naming what was good about them.",
                     "I admit when a position is too unclear for me to judge with confidence."])
CRITIQUE = "2: vague: 'the idea behind every move' needs an example\n5: overlapping: close to 1\nThe rest is fine."


def scripted(body: dict) -> str:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if user.startswith("Design the character"):
        return ROUND1 if "already written" in user else ROUND0
    if "TRAIT:" in user:
        trait = re.search(r"TRAIT: (.*)", user).group(1)
        k = trait.split()[1]  # unique per trait here: prompts differ between traits
        return (f"1. Can you look at my game from last night? I lost in {k} moves.\n"
                f"2. Can you look at my game from last night? I lost in {k} moves!\n"
                f'3. "Why is {k} a good idea when I am behind?"\n'
                f"4. I have ten minutes a day to practise; what should I do with them (case {k})?\n"
                f"5. My friend says openings do not matter below 1500 ({k}). Is that true?\n"
                f"6. extra item {k}")
    if user.startswith("These are the traits"):
        return CRITIQUE
    return "I do not know what you want."


class ScriptServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer):
        super().__init__(("127.0.0.1", 0), ScriptHandler)
        self.answer, self.requests = answer, []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class ScriptHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        text = self.server.answer(body)
        out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": text}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out.encode())))
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    def start(answer):
        srv = ScriptServer(answer)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    servers = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def api_args(srv, out, *extra):
    return ["constitution", "draft", "a patient chess coach who explains the reason behind every move", "-o", str(out),
            "--backend", "openai", "--model", "scripted", "--base-url", srv.url, "--traits", "6", "--prompts", "3",
            *extra]


def test_openai_server_draft_dedups_validates_and_critiques(server, tmp_path, capsys):
    srv = server(scripted)
    out = tmp_path / "Chess Coach.yaml"
    assert main(api_args(srv, out, "--critique")) == 0
    assert capsys.readouterr().out.strip() == str(out)
    c = const.load_file(out)
    assert c.name == "chess-coach" and not c.warnings
    assert [t.trait for t in c.traits] == [
        "I never rush a student, however long they need to think.",
        "I explain the idea behind every move before I name the move.",
        "I ask what the student sees on the board before I say what I see.",
        "I point out one thing to improve at a time, never a list of faults.",
        "I celebrate good moves, even small ones, by naming what was good about them.",
        "I admit when a position is too unclear for me to judge with confidence.",
    ]
    for t in c.traits:  # 3 each; the near-duplicate second item and the 'extra' item were not taken
        assert len(t.prompts) == 3 and len({p.rstrip("!?") for p in t.prompts}) == 3
    assert c.traits[3].prompts[:2] == ["Here is my last game, what did I do wrong?", "I keep losing in the opening."]
    assert main(["constitution", "validate", str(out)]) == 0
    text = out.read_text()
    # critique remarks sit right above the traits they name; the rejected near-duplicate is listed at the end
    assert re.search(r"# critique: vague: 'the idea behind every move' needs an example\n(  # .*\n)*  - trait: I explain",
                     text)
    assert re.search(r"# critique: overlapping: close to 1\n(  # .*\n)*  - trait: I celebrate", text)
    assert "# critique (general): The rest is fine." in text
    assert re.search(r"#   \(trait 1\) I am patient and never rush", text)
    # round 2 asked only for the 3 missing traits and showed the 3 kept; no prefill reached a plain server
    drafts = [r for r in srv.requests if r["messages"][1]["content"].startswith("Design the character")]
    assert len(drafts) == 2 and "Write 3 traits" in drafts[1]["messages"][1]["content"]
    assert "3. I ask what the student sees" in drafts[1]["messages"][1]["content"]
    assert all(r["messages"][-1]["role"] == "user" for r in srv.requests)


def test_too_few_traits_is_one_clear_error_and_nothing_written(server, tmp_path, capsys):
    srv = server(lambda body: "I am sorry, I cannot write a list today.")
    out = tmp_path / "coach.yaml"
    assert main(api_args(srv, out, "--rounds", "2")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("charter: error: draft: the model gave 0 usable traits after 2 rounds (needed at least 3")
    assert "nothing written" in err and len(err.splitlines()) == 1
    assert not out.exists() and len(srv.requests) == 2


def test_short_of_target_writes_with_todo_and_keeps_examples(server, tmp_path):
    srv = server(lambda body: ROUND0 if "Design" in body["messages"][1]["content"] else "nothing useful")
    ex = tmp_path / "ex.txt"
    ex.write_text("# mine\n- I use chess notation only after explaining it in words.\n")
    out = tmp_path / "coach.yaml"
    assert main(api_args(srv, out, "--examples", str(ex), "--rounds", "1")) == 0
    c = const.load_file(out)
    assert c.traits[0].trait == "I use chess notation only after explaining it in words."
    assert len(c.traits) == 4 and all(t.prompts == [] for t in c.traits)
    text = out.read_text()
    assert "# TODO: only 4 of 6 traits were usable after 1 rounds" in text
    assert text.count("# TODO: 0 of 3 seed prompts; write 3 more.") == 4
    assert main(api_args(srv, out)) == 1  # an existing file is not overwritten without --force


# --- the embedded model, for real ----------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_draft_is_valid_and_the_same_seed_gives_the_same_file(tmp_path, embedded_path, one_thread):
    args = ["a patient chess coach who explains the reason behind every move", "--name", "coach", "--critique",
            "--traits", "3", "--prompts", "2", "--rounds", "2", "--min-traits", "1", "--max-tokens", "80",
            "--seed", "3", "--dtype", "float32"]  # float32: the same text on CPUs with and without native bf16
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert main(["constitution", "draft", args[0], "-o", str(a), *args[1:]]) == 0
    assert main(["constitution", "draft", args[0], "-o", str(b), *args[1:]]) == 0
    assert a.read_text() == b.read_text()
    assert main(["constitution", "validate", str(a)]) == 0
    c = const.load_file(a)
    assert c.name == "coach" and 1 <= len(c.traits) <= 3
    assert all(const.FIRST_PERSON_RE.match(t.trait) and len(t.prompts) <= 2 for t in c.traits)
    data = yaml.safe_load(a.read_text())
    assert data["description"] == "a patient chess coach who explains the reason behind every move"
    assert a.read_text().startswith("# Drafted by `charter constitution draft` with embedded (transformers), seed 3")


def test_bad_draft_arguments_are_one_line_errors_before_any_model_loads(tmp_path, capsys):
    out = str(tmp_path / "x.yaml")
    for extra, msg in [
        (["   "], "DESCRIPTION: expected a one-line description"),
        (["a coach", "--traits", "0"], "--traits 0: expected a number >= 1"),
        (["a coach", "--min-traits", "11"], "--min-traits 11: expected 1..10"),
        (["a coach", "--name", "Bad Name"], "--name 'Bad Name'"),
        (["a coach", "--backend", "openai"], "--base-url None: the openai backend needs"),
        (["a coach", "--model", str(tmp_path)], "not a Hugging Face model folder"),
        (["a coach", "--examples", str(tmp_path / "none.txt")], "--examples"),
        (["a coach", "--temperature", "-1"], "--temperature -1.0"),
        (["a coach", "--dtype", "int3"], "--dtype: dtype 'int3': expected auto or one of"),
    ]:
        assert main(["constitution", "draft", extra[0], "-o", out, *extra[1:]]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("charter: error:") and msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.yaml").exists()
