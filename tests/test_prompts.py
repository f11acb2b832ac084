"""Shipped prompt pools and the loader for users' own prompt files."""

import json

import pytest

from charter.prompts import PromptSourceError, load_prompt_source, template, traits


def test_general_pool_is_large_and_unique():
    pool = load_prompt_source("builtin", "general")
    assert len(pool) >= 300
    assert len({" ".join(p.lower().split()) for p in pool}) == len(pool)


def test_traits_are_unique_single_words():
    t = traits()
    assert 130 <= len(t) <= 160 and len(set(t)) == len(t)
    assert all(w.isalpha() for w in t)


def test_introspection_template_has_ten_prompts():
    t = template("introspection")
    assert len(t["reflection_prompts"]) == 10
    assert set(t["guidance"]) == {"free", "leading"}


def test_loader_reads_prompt_and_message_rows(tmp_path):
    p = tmp_path / "lima.jsonl"
    rows = [{"prompt": "a?"}, {"conversations": ["b?", "answer"]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "c?"}]}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_prompt_source(str(p)) == ["a?", "b?", "c?"]


def test_loader_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n{"nothing": 1}\n')
    with pytest.raises(PromptSourceError, match="line 2"):
        load_prompt_source(str(p))
