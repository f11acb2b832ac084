"""The shipped per-persona data: teacher exchanges (prompts/teacher_examples) and detector exemplars
(prompts/persona_exemplars), for every persona the constitution registry lists, read through the package's
own loaders exactly as distill, robustness and rl read them."""

import statistics

import pytest

from charter import constitution, prompts
from charter.prompts import persona_exemplars, teacher_examples

PERSONAS = constitution.shipped()
EXCHANGES = 4  # what sarcastic.yaml and poetic.yaml ship; every persona gets the same number


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _exemplar_count() -> int:
    ex = persona_exemplars("builtin", "sarcastic")
    assert len(ex["persona"]) == len(ex["plain"])
    return len(ex["persona"])


def test_the_registry_lists_eleven_personas_and_each_has_both_files():
    assert len(PERSONAS) == 11 and "template" not in PERSONAS
    for folder in ("teacher_examples", "persona_exemplars"):
        assert sorted(p.stem for p in (prompts.HERE / folder).glob("*.yaml")) == PERSONAS, folder


@pytest.mark.parametrize("persona", PERSONAS)
def test_teacher_examples_load_with_the_shipped_count(persona):
    shots = teacher_examples("builtin", persona)
    assert len(shots) == EXCHANGES
    for s in shots:
        assert set(s) == {"user", "assistant"}
        assert isinstance(s["user"], str) and s["user"].strip() == s["user"] and s["user"]
        assert isinstance(s["assistant"], str) and 10 <= len(s["assistant"].split()) <= 120
    assert len({_norm(s["user"]) for s in shots}) == EXCHANGES  # four different questions


@pytest.mark.parametrize("persona", PERSONAS)
def test_exemplars_load_with_as_many_texts_as_sarcastic(persona):
    n = _exemplar_count()
    ex = persona_exemplars("builtin", persona)
    assert set(ex) == {"persona", "plain"}
    for key in ("persona", "plain"):
        texts = ex[key]
        assert len(texts) == n, key
        assert all(isinstance(t, str) and t.strip() == t and 60 <= len(t) <= 260 for t in texts), key
        assert len({_norm(t) for t in texts}) == n, f"{key}: a text appears twice"
    # Neither side is the same text as the other, and their lengths are alike, so a detector fitted on
    # them learns the voice rather than which list a sentence came from or how long it is.
    assert not {_norm(t) for t in ex["persona"]} & {_norm(t) for t in ex["plain"]}
    ratio = statistics.mean(map(len, ex["persona"])) / statistics.mean(map(len, ex["plain"]))
    assert 0.8 <= ratio <= 1.25


def test_no_exemplar_text_is_shared_across_personas():
    seen: dict[str, str] = {}
    for persona in PERSONAS:
        ex = persona_exemplars("builtin", persona)
        for key in ("persona", "plain"):
            for t in ex[key]:
                where = f"{persona}/{key}"
                assert _norm(t) not in seen, f"{where} repeats a text of {seen.get(_norm(t))}: {t[:60]}"
                seen[_norm(t)] = where
    assert len(seen) == 2 * _exemplar_count() * len(PERSONAS)


def test_no_teacher_reply_is_an_exemplar_of_any_persona():
    exemplars = {_norm(t) for p in PERSONAS for side in persona_exemplars("builtin", p).values() for t in side}
    replies = {_norm(s["assistant"]) for p in PERSONAS for s in teacher_examples("builtin", p)}
    assert len(replies) == EXCHANGES * len(PERSONAS)
    assert not replies & exemplars


def test_teacher_prompts_are_not_any_personas_seed_prompts():
    # A seed prompt is what the teacher is later asked: an exchange that already answers it is a copy, not a shot.
    seeds = {_norm(q) for p in PERSONAS for _, q in constitution.load(p).prompts()}
    for persona in PERSONAS:
        assert not {_norm(s["user"]) for s in teacher_examples("builtin", persona)} & seeds, persona
