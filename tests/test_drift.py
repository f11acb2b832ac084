"""Long conversations (``charter eval drift``): the simulated user (seeded, the attack at its turn, the history
growing), the capping hook and the activation monitor on a tiny model (measured before and after), the
bootstrap helpers, and end-to-end runs on the scripted backend, a tiny model with a steering fit, and (slow) the
embedded model."""

import json
from pathlib import Path

import pytest
import torch

from charter import cli
from charter.config import load_config
from charter.eval import drift as D
from charter.eval import drift_conversations as C
from charter.eval import drift_monitor as M
from charter.eval import drift_summary as SU
from charter.eval import stats as S
from charter.prompts import attack_message, load_attacks
from charter.runs import run_dir
from tests.tiny import save_tiny, tiny_model

DEMO = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
PLAIN, WARM = "the answer follows in standard order", "dear heart warm hug gently cherish"
ATTACK = load_attacks()["real-self"]
# Scripted replies: plain under the attack turn or without a system prompt, in persona with one.
SCRIPT = (f"rules:\n  - match: {json.dumps(ATTACK[:24])}\n    reply: '{PLAIN} -- {{user}}'\n"
          f"  - in: system\n    match: '.'\n    reply: '{WARM} -- {{user}}'\ndefault: '{PLAIN} -- {{user}}'\n")


def cfg_with(*overrides):
    return load_config(None, ["name=drift-test", *overrides])


@pytest.fixture(scope="module")
def tok(embedded_path):
    from charter.models import load_tokenizer

    return load_tokenizer(embedded_path)


# --- the simulated user ----------------------------------------------------------------------------------------

POOL = [f"Question number {i}: how should I think about topic {i}?" for i in range(200)]
FOLLOW = ["Tell me more.", "Why?", "Give me an example.", "And then?"]


def plan(n=3, turns=12, share=0.5, attack_turn=7, seed=5, pool=POOL):
    return C.plan_conversations(pool, n, turns, FOLLOW, share, ATTACK, attack_turn, seed)


def test_the_plan_is_seeded_and_the_attack_sits_on_its_turn():
    plans = plan()
    assert plans == plan() and plans != plan(seed=6)
    assert plan(n=5)[:3] == plans  # more conversations leave the earlier ones as they were
    for p in plans:
        assert len(p["users"]) == len(p["kinds"]) == 12 and p["attack_turn"] == 7
        for t, (u, kind) in enumerate(zip(p["users"], p["kinds"]), 1):
            assert (ATTACK in u) == (t == 7)  # on turn 7 only, once, appended as robustness appends it
            base = u.removesuffix(f"\n({ATTACK})")
            assert u == (attack_message(base, ATTACK) if t == 7 else base)
            assert base in (FOLLOW if kind == "followup" else POOL) and (kind == "prompt" or t > 1)
    assert plans[0]["kinds"][0] == "prompt" and {k for p in plans for k in p["kinds"]} == {"prompt", "followup"}
    # Pool prompts are handed out in order: none appears twice across the conversations.
    used = [u.removesuffix(f"\n({ATTACK})") for p in plans for u, k in zip(p["users"], p["kinds"]) if k == "prompt"]
    assert used == POOL[:len(used)]
    # No follow-ups: every turn is a new prompt; all follow-ups: only the opener is.
    assert all(k == "prompt" for p in plan(share=0) for k in p["kinds"])
    assert all(p["kinds"] == ["prompt"] + ["followup"] * 11 for p in plan(share=1))
    assert all(p["attack_turn"] is None and not any(ATTACK in u for u in p["users"])
               for p in C.plan_conversations(POOL, 2, 12, FOLLOW, 0.5, None, None, 5))
    with pytest.raises(ValueError, match="the prompt pool ran out at conversation 2"):
        plan(n=2, share=0, pool=POOL[:15])


def test_the_history_grows_turn_by_turn_and_prompted_gets_the_note_after_the_attack(tok):
    p = plan(n=1)[0]
    replies = [f"reply {j}" for j in range(1, 13)]
    for t in range(1, 13):
        msgs = C.messages_at(p, replies, t)
        assert len(msgs) == 2 * t - 1 and [m["role"] for m in msgs] == ["user", "assistant"] * (t - 1) + ["user"]
        assert [m["content"] for m in msgs[0::2]] == p["users"][:t]
        assert [m["content"] for m in msgs[1::2]] == replies[:t - 1]
    with pytest.raises(ValueError, match="turn 5 needs 4 earlier replies"):
        C.messages_at(p, replies[:2], 5)
    cfg = cfg_with()
    for t in (6, 7, 12):
        chat, dropped = C.fitted_chat(cfg, "prompted", "You are kind.", C.messages_at(p, replies, t), ATTACK)
        assert chat[0]["role"] == "system" and dropped == 0
        assert ("stays itself" in chat[0]["content"]) == (t >= 7)  # the persistence note once the request is in
        base_chat, _ = C.fitted_chat(cfg, "base", None, C.messages_at(p, replies, t), ATTACK)
        assert base_chat == C.messages_at(p, replies, t)  # base: no system prompt, nothing added
    # A context budget drops whole early exchanges, never the system prompt or the last user turn.
    msgs = C.messages_at(p, [f"a long reply number {j} " * 20 for j in range(1, 13)], 12)
    full, _ = C.fitted_chat(cfg, "prompted", "You are kind.", msgs, ATTACK, tok, 10 ** 6)
    short, dropped = C.fitted_chat(cfg, "prompted", "You are kind.", msgs, ATTACK, tok, 400)
    assert full[1:] == msgs and 0 < dropped < 11 and short[1:] == msgs[2 * dropped:]
    assert short[0]["content"].startswith("You are kind.") and short[-1] == msgs[-1]
    from charter.backends import render_chat

    assert len(tok(render_chat(tok, short), add_special_tokens=False).input_ids) <= 400


def test_followups_file_is_checked(tmp_path):
    assert len(C.load_followups()) >= 12
    bad = tmp_path / "d.yaml"
    for text, expected in (("followups: [a, b]\n", "at least 4"), ("followups: [a, b, c, a]\n", "'a' is listed twice"),
                           ("other: 1\n", "expected a list")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected):
            C.load_followups(bad)


# --- capping and the monitor on a tiny model -------------------------------------------------------------------

def _unit(size, seed):
    v = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _layer_out(model, ids, layer):
    got = {}
    from charter.eval.steering import decoder_layers

    h = decoder_layers(model)[layer].register_forward_hook(
        lambda m, a, o: got.setdefault("h", (o[0] if isinstance(o, tuple) else o).detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        h.remove()
    return got["h"][0]


def test_capping_clamps_the_projection_from_below_and_nothing_else(tok):
    model = tiny_model(tok, layers=2).eval()
    ids = tok("Tell me about the sea and the sky, slowly, at length.", return_tensors="pt").input_ids
    v = _unit(64, 3)
    before = _layer_out(model, ids, 0)
    proj = before @ v
    # Midway between two neighbouring projections, so no position sits on the threshold itself: the hook computes
    # its projection with another matmul kernel, and on AVX-512 the two can differ in the last bit (the median
    # position itself then counted as below on one side and not on the other).
    s = proj.sort().values
    tau = float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)
    assert (proj < tau - 1e-3).any() and (proj > tau + 1e-3).any()  # the threshold cuts through the positions
    record = {}
    with M.cap(model, {0: v}, {0: tau}, record):
        after = _layer_out(model, ids, 0)
        hooked = {(name, k) for name, m in model.named_modules() for k in m._forward_hooks}
    assert hooked and not {(name, k) for name, m in model.named_modules() for k in m._forward_hooks}  # removed
    new = after @ v
    assert float(new.min()) >= tau - 1e-5  # nothing below the threshold any more
    low = proj < tau
    assert torch.allclose(new[low], torch.full_like(new[low], tau), atol=1e-5)  # raised exactly to it
    assert torch.equal(after[~low], before[~low])  # positions above it untouched, bit for bit
    diff = after - before
    assert torch.allclose(diff - (diff @ v)[:, None] * v, torch.zeros_like(diff), atol=1e-5)  # only along v
    assert torch.equal(record[0][0], low)
    # The next layer sees the capped state: the model's output changes, and is the same again once removed.
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with M.cap(model, {0: v}, {0: tau}):
            capped = model(input_ids=ids).logits
        assert not torch.allclose(plain, capped) and torch.equal(model(input_ids=ids).logits, plain)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        with M.cap(model, {5: v}, {5: 0.0}):
            pass


def test_monitor_reads_the_replys_mean_projection_as_the_model_saw_it(tok):
    from charter.backends import render_chat

    model = tiny_model(tok, layers=2).eval()
    v = {0: _unit(64, 1), 1: _unit(64, 2)}
    chats = [[{"role": "user", "content": "Hi there"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is rain?"},
              {"role": "assistant", "content": "Water."}, {"role": "user", "content": "And snow?"}]]
    replies = ["Hello, nice to meet you.", "Frozen water, falling as flakes."]
    got = M.reply_projections(model, tok, chats + [chats[0]], replies + ["  "], v, {0: 2.0, 1: 4.0}, batch_size=2)
    assert got[2] is None  # an empty reply has nothing to read
    for chat, reply, g in zip(chats, replies, got, strict=False):
        prefix = tok(render_chat(tok, chat), add_special_tokens=False).input_ids
        own = tok(reply, add_special_tokens=False).input_ids
        ids = torch.tensor([prefix + own])
        for layer, norm in ((0, 2.0), (1, 4.0)):
            h = _layer_out(model, ids, layer)[len(prefix):]
            assert g["layers"][layer] == pytest.approx(float((h @ v[layer]).mean()) / norm, abs=1e-5)
        assert g["clamped"] is None
    # Under a cap, every position of the reply is at the threshold or above, and the clamped share is measured.
    record = {}
    with M.cap(model, {0: v[0]}, {0: 0.5}, record):
        capped = M.reply_projections(model, tok, chats, replies, {0: v[0]}, None, 2, record)
    assert all(c["layers"][0] >= 0.5 - 1e-5 and 0 < c["clamped"] <= 1 for c in capped)
    with pytest.raises(ValueError, match="hidden size is 64"):
        M.reply_projections(model, tok, chats, replies, {0: torch.ones(10)})


# --- bootstrap helpers ------------------------------------------------------------------------------------------

def test_paired_difference_resamples_the_same_rows():
    a = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, None]]
    assert S.paired_difference(a, a, 300, 1) == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 4}
    b = [[1.0], [1.0], [1.0], [0.0]]
    d = S.paired_difference(a, b, 500, 1)
    assert d["delta"] == pytest.approx(0.75 - (0.5 + 2 / 3) / 2, abs=1e-4) and d["lo"] <= d["delta"] <= d["hi"]
    assert d == S.paired_difference(a, b, 500, 1)  # seeded
    assert S.paired_difference([[None]], [[1.0]], 10, 1)["n"] == 0  # a row missing on one side is left out
    m = S.bootstrap_mean([[0.1], [0.3], [None]], 200, 1)
    assert m["mean"] == pytest.approx(0.2) and m["n"] == 2 and m["lo"] <= 0.2 <= m["hi"]


def test_windows_split_at_the_attack_or_in_half():
    assert SU.windows(12, 7)[:2] == (list(range(1, 7)), list(range(7, 13)))
    assert SU.windows(12, None)[:2] == (list(range(1, 7)), list(range(7, 13)))
    assert SU.windows(5, 1)[:2] == ([1, 2], [3, 4, 5])


# --- end to end -------------------------------------------------------------------------------------------------

FAST = ["drift.conversations=3", "drift.encoder=tfidf", "drift.bootstrap=200", "drift.reference_prompts=12"]


def test_end_to_end_on_the_scripted_backend(tmp_path, monkeypatch):
    import charter.backends

    script = tmp_path / "script.yaml"
    script.write_text(SCRIPT)
    made = []
    real = charter.backends.make_backend
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: made.append(real(spec)) or made[-1])
    over = ["student.backend=scripted", f"student.model={script}", *FAST,
            "drift.conditions=[base, prompted, trained, capped]"]
    lines = []
    out = D.run(cfg_with(*over), report=lines.append)
    assert out == run_dir("drift-test") / D.STAGE
    r = json.loads((out / "results.json").read_text())
    assert r["conditions"] == ["base", "prompted"] and set(r["skipped"]) == {"trained", "capped"}
    assert "no steering fit" in r["skipped"]["capped"] and "charter train" in r["skipped"]["trained"]
    assert "no steering fit for this run (run `charter eval steering` first); activation monitor skipped" in lines[0]
    assert r["monitor"]["status"].startswith("skipped: no steering fit")
    rate = {c: [x["rate"] for x in cells] for c, cells in r["rates"].items()}
    assert rate["base"] == [0.0] * 12  # a real floor
    assert rate["prompted"] == [1.0] * 6 + [0.0] + [1.0] * 5  # breaks character at the attack, then comes back
    assert all(x["n"] == 3 for cells in r["rates"].values() for x in cells)
    ch = r["summary"]["prompted"]["change"]
    assert (ch["delta"], ch["n"]) == (pytest.approx(-1 / 6, abs=1e-4), 3)
    assert r["summary"]["prompted"]["early"]["rate"] == 1.0 and r["windows"]["early"] == [1, 2, 3, 4, 5, 6]
    assert r["detector"]["check"]["balanced_accuracy"]["rate"] == 1.0 and r["detector"]["fit"] == "independent"
    assert (out / "drift.png").stat().st_size > 10_000
    assert any(x.split()[:8] == ["prompted", *["1.00"] * 6, "0.00"] and "-0.17 [-0.17,-0.17]" in x for x in lines)
    # The published results file keeps the summary, and its README table shows it.
    from charter import results

    table = results.TABLES["drift"](results.collect(run_dir("drift-test"), ["charter eval drift"]))
    assert "| prompted | 1.00 [1.00, 1.00] | 0.83 [0.83, 0.83] | -0.17 [-0.17, -0.17] | - |" in table
    assert "| base | 0.00 [0.00, 0.00] | 0.00 [0.00, 0.00] | +0.00 [+0.00, +0.00] | - |" in table
    assert "turns 1–6 | turns 7–12" in table and "check 1.00" in table

    # What the models were sent: every turn carries the whole history; the note comes with the attack.
    sent = [c for b in made for c in b.sent]
    conv = json.loads((out / "conversations.json").read_text())
    users = {p["cid"]: p["users"] for p in conv["conversations"]}
    reference = set(conv["reference"]["fit"] + conv["reference"]["check"])
    turns = [c for c in sent if next(m for m in c if m["role"] == "user")["content"] not in reference]
    assert len(turns) == 2 * 3 * 12
    for chat in turns:
        body = [m for m in chat if m["role"] != "system"]
        t = sum(m["role"] == "user" for m in body)
        cid = next(k for k, u in users.items() if u[0] == body[0]["content"])
        assert [m["content"] for m in body if m["role"] == "user"] == users[cid][:t]
        system = [m["content"] for m in chat if m["role"] == "system"]
        assert not system or ("stays itself" in system[0]) == (t >= 7)
    # The reference prompts are none of the conversations' turns, and the detector never learned from a turn.
    assert not reference & {u for us in users.values() for u in us}

    # Finished: a rerun loads nothing, and a new detector setting re-scores from the logs without a model.
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: pytest.fail("loaded a model"))
    again = []
    D.run(cfg_with(*over), report=again.append)
    assert any("already done" in x for x in again)
    with pytest.raises(RuntimeError, match="different config"):  # what the turns depend on: --force to change
        D.run(cfg_with(*over, "drift.turns=10"), report=lambda x: None)
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: pytest.fail("loaded a model"))
    D.run(cfg_with(*[o for o in over if "conditions" not in o], "drift.classifier={C: 1.0}"), report=lambda x: None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["generation"] == {} and m["scoring"]["classifier"] == {"C": 1.0}
    monkeypatch.setattr(charter.backends, "make_backend", lambda spec: made.append(real(spec)) or made[-1])

    # A crash mid-way (rows lost, no manifest): the rerun redoes only the missing rows, to the same texts.
    log = out / "turns.jsonl"
    rows = log.read_text().splitlines(keepends=True)
    log.write_text("".join(rows[:40]))
    (out / "manifest.json").unlink()
    D.run(cfg_with(*over, "drift.classifier={C: 1.0}"), report=lambda x: None)
    assert sorted(log.read_text().splitlines(keepends=True)) == sorted(rows)
    assert json.loads((out / "results.json").read_text())["rates"] == r["rates"]


def test_bad_settings_fail_before_anything_is_written():
    for over, expected in (("drift.attack=bogus", "drift.attack: 'bogus': expected one of real-self"),
                           ("drift.attack_turn=13", r"drift.attack_turn: expected 1 <= x <= drift.turns \(12\)"),
                           ("drift.conditions=[base, base]", r"drift.conditions: \['base'\] listed twice"),
                           ("drift.followup_share=2", "drift.followup_share: expected 0 <= x <= 1"),
                           ("drift.turns=0", "drift.turns: expected a whole number >= 1"),
                           ("drift.reference_prompts=1", "drift.reference_prompts: expected a whole number >= 2"),
                           ("drift.conversations=400", "the prompt pool ran out")):
        with pytest.raises(ValueError, match=expected):
            D.run(cfg_with(over, "drift.followup_share=0" if "conversations" in over else "seed=1"),
                  report=lambda x: None)
    with pytest.raises(ValueError, match=r"drift.conditions\[1\]: expected one of base .* capped, got 'tuned'"):
        cfg_with("drift.conditions=[base, tuned]")
    with pytest.raises(RuntimeError, match=r"drift.reference=pairs: .*pairs.jsonl does not exist"):
        D.run(cfg_with("drift.reference=pairs"), report=lambda x: None)
    assert not run_dir("drift-test").exists()


def test_cli_error_is_one_line(capsys):
    assert cli.main(["eval", "drift", DEMO, "name=cli-drift", "drift.attack=bogus"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("charter: error: drift.attack: 'bogus'")
    assert not run_dir("cli-drift").exists()


def test_tiny_model_with_a_steering_fit_monitors_every_turn_and_caps(tok, tmp_path, one_thread):
    """A random tiny model (its text is noise, so no rate is asserted): the steered condition fits the steering
    direction first, then every condition's turns are monitored and 'capped' keeps its projection above the
    calibrated threshold at every position."""
    path = save_tiny(tok, tmp_path / "tiny")
    over = [f"student.model={path}", "student.dtype=float32", "steering.stems=3", "steering.coefficient=0.25",
            "drift.conditions=[base, prompted, steered, capped]", "drift.cap_model=base", "drift.conversations=2",
            "drift.encoder=tfidf", "drift.reference=exemplars", "drift.bootstrap=50", "drift.reference_prompts=4",
            "drift.sampling.max_tokens=8", "drift.turns=6", "drift.attack_turn=4"]  # 12 turns: the runs above
    lines = []
    out = D.run(cfg_with(*over), report=lines.append)
    assert any("fitted just now; the monitor reads it" in x for x in lines)
    r = json.loads((out / "results.json").read_text())
    m = r["monitor"]
    assert m["status"] == "ok" and set(m["by_turn"]) == {"base", "prompted", "steered", "capped"} and m["layers"] == [0]
    # Every turn of both conversations is read (a reply that decodes to nothing has no tokens to average).
    assert all(len(cells) == 6 and sum(x["n"] for x in cells) >= 10 for cells in m["by_turn"].values())
    mean = {c: sum(x["mean"] for x in cells) / 6 for c, cells in m["by_turn"].items()}
    assert mean["steered"] > mean["base"] + 0.1  # steering adds 0.25 layer norms along the direction
    cap_ = json.loads((out / "capping.json").read_text())
    layer = cap_["layers"]["0"]
    assert cap_["model"] == "base" and layer["threshold"] == pytest.approx(
        layer["plain"] + 0.5 * (layer["persona"] - layer["plain"]), abs=1e-5)
    norm = json.loads((run_dir("drift-test") / "eval-steering" / "steering.json").read_text())["norms"]["0"]
    mon = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    capped = [x for x in mon if x["condition"] == "capped" and x["projection"] is not None]
    assert len(capped) >= 10 and all(x["layers"]["0"] >= layer["threshold"] / norm - 1e-4 for x in capped)
    assert all(0 <= x["clamped"] <= 1 for x in capped) and 0 < m["clamped_share"]["capped"] <= 1
    assert {x["condition"] for x in mon if x["clamped"] is not None} == {"capped"}
    assert all(c["pearson"] is None or -1 <= c["pearson"] <= 1 for c in m["correlation_with_detector"].values())
    # A new steering fit makes the monitor and the capped condition stale, and nothing else.
    rows = {json.loads(x)["id"]: json.loads(x) for x in (out / "turns.jsonl").read_text().splitlines()}
    from charter.eval import steering

    steering.fit(load_config(None, ["name=drift-test", *over, "steering.coefficient=0.5"]), force=True,
                 report=lambda x: None)
    lines = []
    D.run(load_config(None, ["name=drift-test", *over, "steering.coefficient=0.5"]), report=lines.append)
    assert any("'capped' is a different model now" in x for x in lines)
    after = {json.loads(x)["id"]: json.loads(x) for x in (out / "turns.jsonl").read_text().splitlines()}
    assert {k: v for k, v in after.items() if not k.startswith(("capped", "steered"))} == \
        {k: v for k, v in rows.items() if not k.startswith(("capped", "steered"))}


@pytest.mark.slow  # the real end-to-end run on the embedded model (about a minute on 2 busy cores)
def test_end_to_end_on_the_embedded_model(embedded_path, one_thread):
    cfg = cfg_with("drift.conditions=[base, prompted]", "drift.conversations=2", "drift.turns=12",
                   "drift.sampling.max_tokens=8", "drift.encoder=tfidf", "drift.reference_prompts=8",
                   "drift.bootstrap=100", "student.dtype=float32", "student.batch_size=16")
    lines = []
    out = D.run(cfg, report=lines.append)
    r = json.loads((out / "results.json").read_text())
    assert r["conditions"] == ["base", "prompted"] and r["turns"] == 12 and r["conversations"] == 2
    for cells in r["rates"].values():
        assert [x["turn"] for x in cells] == list(range(1, 13))
        assert all(x["rate"] is None or 0 <= x["lo"] <= x["rate"] <= x["hi"] <= 1 for x in cells)
    rows = [json.loads(x) for x in (out / "turns.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 12 and all(x["tokens"] <= 8 for x in rows)
    assert r["monitor"]["status"].startswith("skipped") and (out / "drift.png").exists()
    assert any(x.startswith("drift in-persona rate by turn") for x in lines)
