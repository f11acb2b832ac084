"""The scripted backend: rules, defaults, prefills and budgets as a stage sees them; bad scripts fail clearly."""

import pytest

from charter.backends import make_backend
from charter.config import ModelSpec, Sampling, load_config
from charter.preflight import check_model_spec
from charter.config import ConfigError


def test_rules_default_prefill_and_budget(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text('rules:\n  - match: "(?i)poem"\n    reply: "Roses are red, {user}"\n'
                      '  - in: system\n    match: sarcastic\n    reply: "Oh, wonderful. {n}"\n'
                      'default: "Plain: {user}"\n')
    b = make_backend(ModelSpec(model=str(script), backend="scripted"))
    chats = [[{"role": "user", "content": "Write a POEM"}],
             [{"role": "system", "content": "You are sarcastic."}, {"role": "user", "content": "Hi"}],
             [{"role": "user", "content": "What is two plus two?"}]]
    out = b.generate(chats, Sampling(max_tokens=50))
    assert [c.text for c in out] == ["Roses are red, Write a POEM", "Oh, wonderful. 2", "Plain: What is two plus two?"]
    assert all(c.finished for c in out) and out[2].tokens == 6
    script.write_text('default: "{prefill}1. Why is the sky blue?"\n')
    cut = make_backend(ModelSpec(model=str(script), backend="scripted")).generate(
        [chats[2]], Sampling(max_tokens=3), prefills=["Well, "])[0]
    assert cut.text == "Well, 1. Why" and not cut.finished
    assert b.sent[-1] == chats[2]


def test_echo_and_bad_scripts(tmp_path):
    b = make_backend(ModelSpec(model="echo", backend="scripted"))
    assert b.generate([[{"role": "user", "content": "hello"}]], Sampling())[0].text == "echo: hello"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - match: x\n")
    with pytest.raises(ConfigError, match=r"student\.model: .*rules\[0\]: expected a mapping with a 'reply'"):
        check_model_spec(ModelSpec(model=str(bad), backend="scripted"), "student")
    with pytest.raises(ConfigError, match="expected 'echo' or a YAML/JSON script"):
        check_model_spec(ModelSpec(model="/no/such/script.yaml", backend="scripted"), "student")
    assert load_config(None, ["student.backend=scripted", "student.model=echo"]).student.backend == "scripted"
