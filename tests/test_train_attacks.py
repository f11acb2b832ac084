"""Training break-character requests: well formed, and never the evaluation's own phrasings."""

import random

from charter.prompts import load_attacks
from charter.prompts import attacked, train_attacks
from charter.stages.expand import too_similar


def test_training_requests_are_not_the_evaluation_attacks():
    evaluation = [t for t in load_attacks().values() if t]
    assert len(evaluation) == 8
    for request in train_attacks()["requests"]:
        # No training phrasing shares more than half its words with an evaluation attack (or vice versa).
        assert too_similar(request, evaluation, 0.5) is None, request
        for e in evaluation:
            assert too_similar(e, [request], 0.5) is None, (e, request)


def test_attacked_places_the_request_and_keeps_the_prompt():
    rng = random.Random(0)
    seen_forms = set()
    for _ in range(40):
        message, request = attacked("What is a good name for a cat?", rng)
        assert "What is a good name for a cat?" in message and request in message
        seen_forms.add(message.index(request) == 0)
    assert seen_forms == {True, False}  # before and after the prompt
    a = [attacked("Hi", random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]  # seeded


def test_attack_share_adds_attacked_copies_deterministically():
    from charter import constitution as const
    from charter.config import load_config
    from charter.selection import select_prompts

    c = const.load("sarcastic")
    plain = select_prompts(load_config(None, ["distill.general_prompts=10"]), c)
    cfg = load_config(None, ["distill.general_prompts=10", "distill.attack_share=0.25"])
    first, again = select_prompts(cfg, c), select_prompts(cfg, c)
    assert first == again and first[: len(plain)] == plain
    extra = first[len(plain):]
    assert len(extra) == round(0.25 * len(plain)) and all(e["attack"] in e["prompt"] for e in extra)
    originals = {p["prompt"] for p in plain}
    assert all(any(o in e["prompt"] for o in originals) for e in extra)
    assert "persistence" not in const.teacher_system_prompt(c, "X")  # the prompted baseline is unchanged
    assert "stays itself" in const.persistence_note("X")
