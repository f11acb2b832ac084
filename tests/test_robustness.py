"""Robustness: attacks, the split, leakage, scoring bookkeeping (fake models), and one embedded-model run."""

import json
import math

import pytest

from charter.backends import Completion
from charter.config import load_config
from charter.eval import conditions
from charter.eval import robustness as R
from charter.runs import RowLog, run_dir

RESULT_KEYS = {"mode", "labels", "encoder", "n_train", "n_heldout", "table", "summary", "prefill"}


def cfg_with(*overrides):
    return load_config(None, ["name=rob-test", *overrides])


# ------------------------------------------------------------------------------------------ attacks and split


def test_attack_file_has_none_and_eight_distinct_attacks():
    attacks = R.load_attacks()
    assert list(attacks)[0] == "none" and attacks["none"] is None
    texts = [t for a, t in attacks.items() if a != "none"]
    assert len(texts) == 8 and len(set(texts)) == 8 and all(t.strip() for t in texts)
    assert R.select_attacks(None) == list(attacks)[1:]
    assert R.select_attacks(["very-neutral", "assistant"]) == ["assistant", "very-neutral"]  # file order
    with pytest.raises(ValueError, match="unknown id"):
        R.select_attacks(["be-evil"])


def test_attack_suffix_is_applied_exactly_once():
    text = R.load_attacks()["assistant"]
    msg = R.attack_message("How do I fix a bike chain?", text)
    assert msg == f"How do I fix a bike chain?\n({text})" and msg.count(text) == 1
    assert R.attack_message("Hi", None) == "Hi"
    with pytest.raises(ValueError, match="already"):
        R.attack_message(msg, text)
    train, heldout = [("t0", "p-train")], [("h0", "p-one"), ("h1", "p-two")]
    items = R.main_items("prompted", train, heldout, ["assistant", "neutral-tone"])
    assert len(items) == 1 + 2 * 3 and len({it["id"] for it in items}) == len(items)
    attacks = R.load_attacks()
    for it in items:
        assert it["split"] == ("train" if it["pid"] == "t0" else "heldout")
        for aid, t in attacks.items():
            if t is not None:
                assert it["user"].count(t) == (1 if aid == it["attack"] else 0), it
        assert it["user"].startswith(it["prompt"])


def test_split_is_disjoint_and_reproducible_from_the_seed():
    pool = [f"prompt {i}" for i in range(50)] + ["prompt 3", "  prompt 4 "]  # duplicates cannot straddle the split
    a = R.split_prompts(pool, 40, 0.25, seed=7)
    assert a == R.split_prompts(pool, 40, 0.25, seed=7)
    assert a != R.split_prompts(pool, 40, 0.25, seed=8)
    train, heldout = a
    assert len(train) == 30 and len(heldout) == 10 and not set(train) & set(heldout)
    assert len(set(train)) == 30
    assert R.split_prompts(pool, 1000, 0.5, 1)[0].__len__() == 25  # capped at the distinct pool
    with pytest.raises(ValueError, match="between 0 and 1"):
        R.split_prompts(pool, 10, 1.0, 1)


def test_leak_check_fires_on_any_shared_prompt():
    R.check_no_leak(["a", "b"], ["c"])
    with pytest.raises(AssertionError, match="held-out prompt"):
        R.check_no_leak(["a", "b"], ["b", "c"])
    rows = [{"condition": "prompted", "attack": "none", "split": "heldout", "prompt": "b", "response": "x"}]
    src = R.Source("r", "loving", rows)
    # A plain held-out reply is never training data, and a tampered train list is caught.
    assert R.training_set([src], "single", ["prompted"], ["a"], {"b"})[0] == []
    with pytest.raises(AssertionError):
        R.training_set([src], "single", ["prompted"], ["a", "b"], {"b"})


def test_summary_mean_and_sem_over_attacks_only():
    cell = lambda f1, acc: {"macro_f1": f1, "accuracy": acc, "n": 10}  # noqa: E731
    table = {"prompted": {"none": cell(1.0, 1.0), "a": cell(0.5, 0.6), "b": cell(0.7, 0.8), "c": cell(0.9, 1.0)},
             "base": {"none": cell(0.4, 0.5), "a": cell(0.3, 0.5)}}
    s = R.summarize(table, ["a", "b", "c"])
    assert s["prompted"] == {"mean_f1": 0.7, "sem_f1": round(0.2 / math.sqrt(3), 4), "mean_acc": 0.8}
    assert s["base"] == {"mean_f1": 0.3, "sem_f1": 0.0, "mean_acc": 0.5}  # one attack: no spread to estimate


# ------------------------------------------------------------------------------------------ fake conditions

WORDS = {"base": "the answer follows in standard order", "loving": "dear heart warm hug gently cherish",
         "sarcastic": "oh great obviously sure genius wow"}


class FakeBackend:
    """Replies in a persona's words (or plain), quoting the prompt; records every chat it is sent."""

    def __init__(self, style, cond, sent):
        self.style, self.cond, self.sent = style, cond, sent

    def generate(self, chats, sampling, prefills=None, seed=0):
        out = []
        for chat in chats:
            self.sent.append((self.cond, chat))
            first = next(m["content"] for m in chat if m["role"] == "user")
            style = self.style
            if self.cond == "prompted" and R.load_attacks()["assistant"] in chat[-1]["content"]:
                style = "base"  # the system prompt gives way to this attack: scoring must show it
            out.append(Completion(f"{WORDS[style]} -- {first}", finished=True, tokens=8))
        return out

    def close(self):
        pass


def fake_conditions(monkeypatch, sent, missing=("distilled", "trained"), ident="v1"):
    class FakeConditions:
        def __init__(self, cfg, report=print):
            self.cfg = cfg

        def open(self, label):
            if label in missing:
                raise RuntimeError(f"condition '{label}': no model yet")
            style = "base" if label == "base" else self.cfg.persona
            system = f"You are {self.cfg.persona}." if label == "prompted" else None
            return FakeBackend(style, label, sent), system

        def release(self, label, keep=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(conditions, "Conditions", FakeConditions)
    monkeypatch.setattr(conditions, "identity", lambda cfg, label: f"{ident}-{label}")


FAKE = ["robustness.prompts=24", "robustness.encoder=tfidf", "robustness.conditions=[base, prompted, steered, trained]"]


def test_fake_run_scores_held_out_prompts_only(monkeypatch):
    sent, fitted = [], []
    fake_conditions(monkeypatch, sent)
    real = R.make_classifier

    def spy(*a, **k):
        clf = real(*a, **k)
        fit = clf.fit
        clf.fit = lambda texts, labels: (fitted.extend(texts), fit(texts, labels))[1]
        return clf

    monkeypatch.setattr(R, "make_classifier", spy)
    lines = []
    out = R.run(cfg_with(*FAKE), report=lines.append, attacks=["assistant", "neutral-tone"])
    res = json.loads((out / "results.json").read_text())
    assert set(res) == RESULT_KEYS and res["mode"] == "single" and res["labels"] == ["base", "loving"]
    assert res["encoder"] == "tfidf" and (res["n_train"], res["n_heldout"]) == (12, 12)
    assert set(res["table"]) == {"base", "prompted", "steered"}  # 'trained' has no model: skipped, said why
    assert any("skipping 'trained'" in line for line in lines)
    for cond, cells in res["table"].items():
        assert list(cells) == ["none", "assistant", "neutral-tone"]
        assert all(set(c) == {"macro_f1", "accuracy", "n"} and c["n"] == 24 for c in cells.values())
        assert set(res["summary"][cond]) == {"mean_f1", "sem_f1", "mean_acc"}
    assert res["table"]["steered"]["assistant"]["macro_f1"] == 1.0
    assert res["table"]["prompted"]["neutral-tone"]["macro_f1"] == 1.0
    assert res["table"]["prompted"]["assistant"]["macro_f1"] < 0.5  # broke character: indistinguishable from base
    assert res["table"]["base"]["none"]["accuracy"] == 0.5  # the floor, by construction
    assert set(res["prefill"]) == {"prompted", "steered"} and res["prefill"]["steered"]["n"] == 24

    split = json.loads((out / "split.json").read_text())
    heldout = [x["prompt"] for x in split["heldout"]]
    assert not set(heldout) & {x["prompt"] for x in split["train"]}
    # Training texts quote their prompt: none may quote a held-out one. 3 conditions x 12 train prompts.
    assert len(fitted) == 36 and not any(p in t for t in fitted for p in heldout)

    # Every chat sent carries at most one attack, exactly once, and only on held-out prompts.
    texts = {a: t for a, t in R.load_attacks().items() if t}
    for cond, chat in sent:
        counts = {a: sum(m["content"].count(t) for m in chat) for a, t in texts.items()}
        assert sum(counts.values()) <= 1 and max(counts.values()) <= 1
        if sum(counts.values()):
            assert chat[-1]["content"].split("\n(")[0] in heldout
        assert (chat[0] == {"role": "system", "content": "You are loving."}) == (cond == "prompted")
    turn2 = [c for _, c in sent if c[-1]["content"] == "Keep going."]
    assert len(turn2) == 3 * 12 and all([m["role"] for m in c if m["role"] != "system"] ==
                                        ["user", "assistant", "user"] for c in turn2)
    assert all(c[-2]["content"].startswith(WORDS["base"]) for c in turn2)  # turn 1 is the base model's

    # Finished: a rerun skips. A new encoder re-scores from the log without generating anything.
    again = []
    R.run(cfg_with(*FAKE), report=again.append, attacks=["assistant", "neutral-tone"])
    assert any("already done" in line for line in again)
    n_sent = len(sent)
    R.run(cfg_with(*FAKE, "robustness.classifier={C: 1.0}"), report=lambda x: None,
          attacks=["assistant", "neutral-tone"])
    m = json.loads((out / "manifest.json").read_text())
    assert len(sent) == n_sent and m["generation"] == {}
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert {p["true"] for p in preds if p["condition"] == "base"} == {"base"}


def test_another_encoder_also_writes_the_tfidf_baseline(monkeypatch):
    fake_conditions(monkeypatch, [])
    made = []
    real = R.make_classifier
    # Stand-in for MiniLM (covered in test_classifier.py): only the bookkeeping is under test here.
    monkeypatch.setattr(R, "make_classifier", lambda enc, s, seed=0: (made.append(enc), real("tfidf", {}, seed))[1])
    out = R.run(cfg_with(*FAKE, "robustness.encoder=minilm"), report=lambda x: None, attacks=["assistant"])
    res, base = (json.loads((out / f).read_text()) for f in ("results.json", "results-tfidf.json"))
    assert made[-2:] == ["minilm", "tfidf"] and res["encoder"] == "minilm" and base["encoder"] == "tfidf"
    assert set(base) == RESULT_KEYS and base["table"].keys() == res["table"].keys()


def test_a_changed_model_redoes_only_its_own_replies(monkeypatch):
    sent = []
    fake_conditions(monkeypatch, sent)
    cfg = cfg_with(*FAKE, "robustness.conditions=[base, prompted, steered]")
    R.run(cfg, report=lambda x: None, attacks=["assistant"])
    sent.clear()
    monkeypatch.setattr(conditions, "identity", lambda cfg, label: f"{'v2' if label == 'steered' else 'v1'}-{label}")
    lines = []
    R.run(cfg, report=lines.append, attacks=["assistant"])
    assert any("'steered' is a different model" in line for line in lines)
    assert {c for c, _ in sent} == {"steered"} and len(sent) == 12 + 12 * 2 + 12


def test_multi_persona_mode_uses_other_runs_rows(monkeypatch):
    sent = []
    fake_conditions(monkeypatch, sent)
    R.run(load_config(None, ["name=other", "persona=sarcastic", *FAKE]), report=lambda x: None,
          attacks=["assistant", "neutral-tone"])
    lines = []
    out = R.run(cfg_with(*FAKE, "robustness.personas=[other]"), report=lines.append,
                attacks=["assistant", "neutral-tone"])
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "multi" and res["labels"] == ["loving", "sarcastic"]
    assert set(res["table"]) == {"prompted", "steered"}  # base has no persona label here
    # Same seed and prompt settings: the two runs share the split, so each cell has both personas' replies.
    assert res["table"]["steered"]["none"] == {"macro_f1": 1.0, "accuracy": 1.0, "n": 24}
    assert res["prefill"]["steered"]["n"] == 24
    with pytest.raises(RuntimeError, match="evaluate it first"):
        R.run(cfg_with(*FAKE, "name=third", "robustness.personas=[nowhere]"), report=lambda x: None)


def test_multi_persona_runs_with_different_splits_match_by_prompt_without_leaking(monkeypatch, tmp_path):
    """Another run split the prompts differently (other seed): only its plain replies to *our* train prompts
    train the classifier, and only its replies to our held-out prompts are scored."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"prompt": f"question number {i}?"}) + "\n" for i in range(30)))
    fake_conditions(monkeypatch, [])
    src = [*FAKE, f"robustness.prompt_source={pool}", "robustness.conditions=[base, steered]"]
    R.run(load_config(None, ["name=other", "persona=sarcastic", "seed=99", *src]), report=lambda x: None,
          attacks=["assistant"])
    fitted = []
    real = R.make_classifier

    def spy(*a, **k):
        clf = real(*a, **k)
        fit = clf.fit
        clf.fit = lambda texts, labels: (fitted.extend(zip(texts, labels)), fit(texts, labels))[1]
        return clf

    monkeypatch.setattr(R, "make_classifier", spy)
    out = R.run(cfg_with(*src, "robustness.personas=[other]"), report=lambda x: None, attacks=["assistant"])
    ours = json.loads((out / "split.json").read_text())
    theirs = json.loads((run_dir("other") / R.STAGE / "split.json").read_text())
    assert ours["train"] != theirs["train"]
    heldout = {x["prompt"] for x in ours["heldout"]}
    # Fake replies end with the prompt they answer.
    assert fitted and all(t.split(" -- ")[1] not in heldout for t, _ in fitted)
    assert {y for _, y in fitted} == {"loving", "sarcastic"}
    shared_train = {x["prompt"] for x in ours["train"]} & {x["prompt"] for x in theirs["train"] + theirs["heldout"]}
    assert sum(y == "sarcastic" for _, y in fitted) == len(shared_train)
    res = json.loads((out / "results.json").read_text())
    assert res["table"]["steered"]["none"]["n"] == 12 + len(heldout & {x["prompt"] for x in theirs["heldout"]})


def test_single_mode_needs_base_and_bad_settings_fail_before_any_output(monkeypatch):
    fake_conditions(monkeypatch, [])
    with pytest.raises(ValueError, match="must include 'base'"):
        R.run(cfg_with("robustness.conditions=[prompted]"), report=lambda x: None)
    with pytest.raises(ValueError, match="unknown"):
        R.run(cfg_with("robustness.conditions=[base, tuned]"), report=lambda x: None)
    with pytest.raises(ValueError, match="between 0 and 1"):
        R.run(cfg_with("robustness.heldout_fraction=0"), report=lambda x: None)
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        R.run(cfg_with("robustness.classifier={epoch: 2}"), report=lambda x: None)
    assert not (run_dir("rob-test") / R.STAGE).exists()


# ------------------------------------------------------------------------------------------ embedded model


def test_end_to_end_on_embedded_model(embedded_path, one_thread):
    cfg = cfg_with("robustness.prompts=8", "robustness.conditions=[base, prompted]", "robustness.encoder=tfidf",
                   "robustness.sampling.max_tokens=24", "student.batch_size=16")
    lines = []
    out = R.run(cfg, report=lines.append, attacks=["real-self", "assistant"])
    assert out == run_dir("rob-test") / "eval-robustness"
    res = json.loads((out / "results.json").read_text())
    assert set(res) == RESULT_KEYS and res["mode"] == "single" and (res["n_train"], res["n_heldout"]) == (4, 4)
    assert set(res["table"]) == {"base", "prompted"} and set(res["prefill"]) == {"prompted"}
    for cells in res["table"].values():
        assert list(cells) == ["none", "real-self", "assistant"]
        assert all(0 <= c["macro_f1"] <= 1 and 0 <= c["accuracy"] <= 1 for c in cells.values())
    rows = RowLog(out / "generations.jsonl").rows
    # base and prompted: 4 train + 4 held-out x 3; turn 1 (4, base); turn 2 (4 each).
    assert len(rows) == 2 * (4 + 12) + 4 + 8
    assert any(line.startswith("robustness macro-F1") for line in lines)
