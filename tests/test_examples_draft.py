"""``charter constitution examples``: teacher example exchanges and detector exemplars drafted for any
constitution, and ``teacher_examples: auto`` / ``exemplars: auto`` finding them.

The logic runs on the scripted backend (replies from a rule file, no model), through the real command line:
parsing, the rejected messages and replies, the bounded rounds, the loaders' check, the atomic write and the
seeded output. One slow test drafts with the embedded model for real (structure and validity only)."""

import re

import pytest
import yaml

from charter import constitution as const
from charter.backends.scripted import ScriptedBackend
from charter.cli import main
from charter.config import ModelSpec, load_config
from charter.draft_examples import ExamplesError, ExamplesSpec, draft_examples, topics_for
from charter.draft_parse import parse_item_critique, parse_reply
from charter.prompts import (
    PromptSourceError, load_attacks, load_prompt_source, persona_exemplars, persona_file, teacher_examples,
    template, traits,
)

COACH = {"name": "coach", "description": "A patient chess coach who explains the reason behind every move.",
         "traits": [{"trait": "I explain the idea behind a move before I name the move.",
                     "prompts": ["Why is castling early good?"]},
                    {"trait": "I never rush a student, however long they need to think.",
                     "prompts": ["I always lose on time. Help?"]}]}


@pytest.fixture
def work(tmp_path):
    """A folder of its own (tmp_path also holds the test's CHARTER_HOME)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


def write_coach(folder):
    path = folder / "coach.yaml"
    path.write_text(yaml.safe_dump(COACH, sort_keys=False))
    return path


# --- parsing -----------------------------------------------------------------------------------------------


def test_replies_are_taken_out_of_their_wrapping():
    assert parse_reply('Assistant: "Ah, a fine question. Boil it for nine minutes, then cool it."') == (
        "Ah, a fine question. Boil it for nine minutes, then cool it.", None)
    # the user's message echoed first, markdown, and a made-up next turn after the answer
    text = "User: how do I boil an egg?\n**Answer:** Nine minutes in boiling water,\nthen cold water.\nUser: thanks!"
    assert parse_reply(text) == ("Nine minutes in boiling water, then cold water.", None)
    # cut off by the token limit: the complete sentences stay; nothing complete is nothing
    assert parse_reply("Nine minutes in boiling water does it. Then put it in cold wat", finished=False) == (
        "Nine minutes in boiling water does it.", None)
    assert parse_reply("Nine minutes in boiling water and then", finished=False) == (None, "cut_off")
    assert parse_reply("Sure thing.") == (None, "too_short")
    assert parse_reply("As a coach, one of my traits is patience, so take your time.")[1] == \
        "talks_about_its_character"
    long = " ".join(["This sentence has exactly eight words in it."] * 20)
    kept, why = parse_reply(long)
    assert why is None and len(kept.split()) <= 120 and kept.endswith(".")


def test_labelled_critique_lines():
    per, other = parse_item_critique("shot 2: off-character: too polite\n**Exchange 1.** Unhelpful - no answer\n"
                                     "persona 3: has-character: wrong list\nplain 9: no such text\nFine otherwise.",
                                     {"shot": 2, "plain": 4})
    assert per == {("shot", 1): ["off-character: too polite"], ("shot", 0): ["unhelpful: no answer"]}
    assert other == ["persona 3: has-character: wrong list", "plain 9: no such text", "Fine otherwise."]


# --- the scripted model ------------------------------------------------------------------------------------

WORDS = traits("builtin")  # 144 distinct words: messages made of three each share no content word
POOL_PROMPT = load_prompt_source("builtin", builtin="preference_prompts")[0]
ATTACK = next(t for t in load_attacks().values() if t)
PERSONA_REPLY = "Oh, splendid. {user}"
PLAIN_REPLY = "Plainly put: {user}"
UMBRELLA = ["Where can I buy a good umbrella in town?", "Which umbrella survives strong wind best?"]


def message(i: int) -> str:
    a, b, c = WORDS[3 * i: 3 * i + 3]
    return f"What does {a} have to do with {b} and {c}?"


def rules(folder, *, junk=False, critique=True):
    """A rule file: a list of messages per request (by its topics), in-character and plain replies by the
    system prompt, the same reply to two umbrella messages (a near-duplicate), critiques by their items."""
    topics = template("drafting")["example_topics"]
    out = []
    if critique:
        out.append({"match": r"shot 1: the user wrote", "reply": "shot 2: off-character: too polite for this coach\n"
                    "persona 1: still fine\nThe rest reads well."})
        out.append({"match": r"persona 1: \(to:", "reply": "persona 1: off-character: sounds plain\n"
                    "plain 2: has-character: too cheerful"})
    out.append({"match": "^(" + "|".join(map(re.escape, UMBRELLA)) + ")",
                "reply": "Oh, umbrellas. Buy a sturdy one and never lend it to anyone, ever."})
    for k in range(8):  # topics_for rotates over 8 pairs of areas
        first = topics_for(0, k)[0]
        items = [message(4 * k + i) for i in range(4)]
        if k == 0:  # messages that must be rejected, and the two umbrella messages (taken as exchanges 2 and 3)
            items = [items[0], *UMBRELLA, POOL_PROMPT, f"Tell me about tea. {ATTACK}", "Hi there",
                     items[0].lower().rstrip("?"), *items[1:]]
        listed = "\n".join(f"{i}. {q}" for i, q in enumerate(items, 1)) + "\nHope these help!"
        # the continuation of the prefilled "1.", as a local model would write it
        out.append({"match": re.escape(f"about {first} and"), "reply": listed.removeprefix("1.")})
    if not junk:
        out.append({"in": "system", "match": "character of your own", "reply": PERSONA_REPLY})
        out.append({"in": "system", "match": "neutral tone", "reply": PLAIN_REPLY})
    path = folder / ("junk.yaml" if junk else "rules.yaml")
    # junk: no list at all, even after the prefilled "1."
    path.write_text(yaml.safe_dump({"rules": [] if junk else out, "default": "\n\nSorry, I cannot help with that."}))
    return path


def examples_args(constitution, script, *extra):
    return ["constitution", "examples", str(constitution), "--backend", "scripted", "--model", str(script),
            "--shots", "3", "--exemplars", "5", *extra]


def test_drafts_both_files_beside_the_constitution_and_auto_finds_them(work, capsys):
    coach = write_coach(work)
    assert main(examples_args(coach, rules(work), "--critique")) == 0
    out, err = capsys.readouterr()
    folder = work / "coach.examples"
    assert out.strip() == str(folder)
    assert err.strip() == ("examples: 3/3 teacher exchanges, 5/5 exemplar pairs (persona + plain) in 2 rounds, "
                           "2 near-duplicates and 3 other proposals dropped, critique on 3 texts")
    assert sorted(p.name for p in work.iterdir()) == ["coach.examples", "coach.yaml", "rules.yaml"]
    assert sorted(p.name for p in folder.iterdir()) == ["exemplars.yaml", "teacher_examples.yaml"]
    shots = teacher_examples("auto", str(coach))  # the loaders the stages use, through 'auto'
    ex = persona_exemplars("auto", str(coach), "rl.exemplars")
    users = [s["user"] for s in shots]
    # Round 0 kept 10 messages (the pool prompt, the attack, "Hi there" and the lower-case repeat were dropped):
    # 3 for exchanges, 5 for pairs. The second umbrella reply repeats the first and was dropped, so round 1 took
    # the next unused message for the third exchange.
    assert users == [message(0), UMBRELLA[0], message(6)]
    assert shots[0]["assistant"] == PERSONA_REPLY.format(user=users[0])
    assert [p.removeprefix("Oh, splendid. ") for p in ex["persona"]] == [message(i) for i in range(1, 6)]
    assert [n.removeprefix("Plainly put: ") for n in ex["plain"]] == [message(i) for i in range(1, 6)]
    text = (folder / "exemplars.yaml").read_text()
    assert text.startswith("# Drafted by `charter constitution examples` with ")
    assert re.search(r"  # critique: off-character: sounds plain\n  # to: .*\n  - Oh, splendid", text)
    assert "  # critique: has-character: too cheerful\n  - 'Plainly put:" in text
    shots_text = (folder / "teacher_examples.yaml").read_text()
    assert re.search(r"# critique: off-character: too polite for this coach\n- user: Where can I buy", shots_text)
    assert "# critique (general): The rest reads well." in shots_text
    assert "TODO" not in shots_text + text
    # an existing file is not overwritten without --force; with it, it is
    assert main(examples_args(coach, rules(work))) == 1
    assert "already has teacher_examples.yaml and exemplars.yaml; not overwriting" in capsys.readouterr().err
    assert main(examples_args(coach, rules(work), "--force", "--seed", "5")) == 0
    assert "seed 5" in (folder / "exemplars.yaml").read_text()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_same_seed_same_files_and_a_folder_or_path_as_the_setting(work, capsys):
    # (the scripted backend ignores the seed: this checks that nothing else, a time or a temp path, gets in;
    # the slow test checks the seed on a real model)
    coach, script = write_coach(work), rules(work, critique=False)
    a, b = work / "a", work / "b"
    b.mkdir()  # an empty folder is fine
    assert main(examples_args(coach, script, "-o", str(a), "--seed", "3")) == 0
    assert main(examples_args(coach, script, "-o", str(b), "--seed", "3")) == 0
    for name in ("teacher_examples.yaml", "exemplars.yaml"):
        assert (a / name).read_text() == (b / name).read_text()
    assert teacher_examples(str(a), "coach") == teacher_examples(str(a / "teacher_examples.yaml"), "coach")
    assert persona_file("persona_exemplars", str(a), "coach", "x") == str(a / "exemplars.yaml")


def test_rounds_are_bounded_and_too_little_is_one_error_with_nothing_written(work, capsys):
    coach, script = write_coach(work), rules(work, junk=True)
    backend = ScriptedBackend(ModelSpec(model=str(script), backend="scripted"))
    with pytest.raises(ExamplesError, match="gave 0 usable teacher exchanges and 0 exemplar pairs after 3 rounds"):
        draft_examples(ExamplesSpec(persona=str(coach), shots=3, exemplars=5, rounds=3), backend)
    assert len(backend.sent) == 3 * 2  # two requests for messages a round (8 wanted, 6 a request), no more
    assert main(examples_args(coach, script, "--rounds", "2")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("charter: error: examples: the model gave 0 usable teacher exchanges and 0 exemplar pairs "
                          "after 2 rounds (needed at least 2 and 4; dropped: 8 message not a list item)")
    assert "nothing written" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in work.iterdir()) == ["coach.yaml", "junk.yaml"]


def test_short_of_target_writes_todo_and_a_file_that_does_not_load_writes_nothing(work, capsys, monkeypatch):
    coach, script = write_coach(work), rules(work, critique=False)
    assert main(examples_args(coach, script, "--exemplars", "40", "--rounds", "1", "-o", str(work / "s"))) == 0
    assert "# TODO: only " in (work / "s" / "exemplars.yaml").read_text()
    capsys.readouterr()
    from charter import draft_examples_files

    monkeypatch.setattr(draft_examples_files, "render_exemplars", lambda d: "persona: [one]\nplain: []\n")
    assert main(examples_args(coach, script)) == 1
    err = capsys.readouterr().err.strip()
    assert f"examples: the drafted files do not load ({work}/coach.examples/exemplars.yaml: persona: expected a " \
           "list of at least 4 non-empty strings); nothing written" in err
    assert len(err.splitlines()) == 1 and not (work / "coach.examples").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_bad_arguments_are_one_line_errors_before_any_model_loads(work, capsys):
    coach, script = write_coach(work), rules(work)
    (work / "afile").write_text("x")
    for args, msg in [
        (examples_args(coach, script, "--exemplars", "3"), "--exemplars 3: expected a number >= 4"),
        (examples_args(coach, script, "--min-shots", "9"), "--min-shots 9: expected 1..3"),
        (examples_args(work / "none.yaml", script), "none.yaml: no such persona or file"),
        (examples_args("sarcastic", script), "-o DIR: required for the shipped persona 'sarcastic'"),
        (examples_args(coach, script, "-o", str(work / "afile")), "expected a folder, got a file"),
        (examples_args(coach, work / "nope.yaml"), "expected 'echo' or a YAML/JSON script file"),
        (examples_args(coach, script, "--backend", "openai"), "--base-url None: the openai backend needs"),
        (examples_args(coach, script, "--dtype", "int3"), "--dtype: dtype 'int3'"),
    ]:
        assert main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("charter: error:") and msg in err and len(err.splitlines()) == 1, err
    assert not (work / "coach.examples").exists()


# --- 'auto' ------------------------------------------------------------------------------------------------


def test_auto_is_builtin_for_a_shipped_persona_and_one_clear_error_when_not_drafted(work):
    assert teacher_examples("auto", "sarcastic") == teacher_examples("builtin", "sarcastic")
    shipped_file = str(const.SHIPPED_DIR / "loving.yaml")
    assert persona_exemplars("auto", shipped_file) == persona_exemplars("builtin", "loving")
    coach = write_coach(work)
    with pytest.raises(PromptSourceError) as e:
        teacher_examples("auto", str(coach))
    assert str(e.value) == (f"distill.teacher_examples: auto: no drafted {work}/coach.examples/"
                            f"teacher_examples.yaml for the constitution {coach}; run `charter constitution examples "
                            f"{coach}` to draft it, or give a YAML file")
    with pytest.raises(PromptSourceError, match=r"rl.exemplars: builtin: no shipped file for persona .*use 'auto' "
                                                r"\(run `charter constitution examples"):
        persona_exemplars("builtin", str(coach), "rl.exemplars")
    with pytest.raises(PromptSourceError, match="auto: persona 'stoic' is neither a shipped persona nor a "):
        persona_exemplars("auto", "stoic")
    (work / "empty").mkdir()
    with pytest.raises(PromptSourceError, match="a folder without exemplars.yaml"):
        persona_exemplars(str(work / "empty"), "coach")


def test_a_user_constitution_with_drafted_examples_runs_distill_rl_and_the_evaluations_inputs(work, capsys):
    from charter.eval import conditions, inpersona
    from charter.rewards import persona as persona_reward
    from charter.stages import distill, rl

    coach = write_coach(work)
    overrides = [f"persona={coach}", "distill.teacher_examples=auto", "rl.enabled=true", "rl.exemplars=auto",
                 "robustness.exemplars=auto"]
    cfg = load_config(None, overrides)
    with pytest.raises(PromptSourceError, match="run `charter constitution examples"):
        distill.stage_config(cfg)
    assert main(examples_args(coach, rules(work))) == 0
    shots = teacher_examples("auto", str(coach))
    assert distill.stage_config(cfg)["distill"]["teacher_examples"] == {"source": "auto", "exchanges": shots}
    rl.check(cfg)  # the RL persona reward's default reference (exemplars) finds the drafted ones
    persona_texts, plain_texts, _ = persona_reward.reference(cfg)
    assert len(persona_texts) == len(plain_texts) == 5
    assert conditions.shots(cfg, "prompted") == shots  # the 'prompted' condition sees the teacher's exchanges
    # the robustness detector: handed the resolved file, as the evaluation should (it only has the label)
    path = persona_file("persona_exemplars", cfg.robustness.exemplars, cfg.persona, "robustness.exemplars")
    texts, labels, _ = inpersona.reference_texts("r", [], "coach", "exemplars", [], [], exemplars=path)
    assert labels.count("coach") == 5 and labels.count("base") == 5
    assert inpersona.exemplars_identity(cfg.persona, "auto") == inpersona.exemplars_identity("coach", path)


# --- the embedded model, for real ----------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_examples_are_valid_and_the_same_seed_gives_the_same_files(work, embedded_path, one_thread):
    coach = write_coach(work)
    args = ["--shots", "2", "--exemplars", "4", "--min-shots", "1", "--rounds", "3", "--max-tokens", "120",
            "--reply-tokens", "60", "--seed", "3", "--dtype", "float32"]  # float32: the same text on every CPU
    a, b = work / "a", work / "b"
    assert main(["constitution", "examples", str(coach), "-o", str(a), *args]) == 0
    assert main(["constitution", "examples", str(coach), "-o", str(b), *args]) == 0
    for name in ("teacher_examples.yaml", "exemplars.yaml"):
        assert (a / name).read_text() == (b / name).read_text()
        assert (a / name).read_text().startswith("# Drafted by `charter constitution examples` with embedded "
                                                 "(transformers), seed 3")
    shots = teacher_examples(str(a), "coach")
    ex = persona_exemplars(str(a), "coach")
    assert 1 <= len(shots) <= 2 and all(s["user"] and s["assistant"] for s in shots)
    assert len(ex["persona"]) == len(ex["plain"]) == 4
    assert not {s["assistant"] for s in shots} & set(ex["persona"] + ex["plain"])
