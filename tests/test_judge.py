"""The revealed-preference judge: prompt and verdict parsing."""

import pytest

from charter.judges.trait import judge_chat, parse_verdict
from charter.prompts import template

JUDGE_SYSTEM = template("judges")["trait"]["system"]

CHOICES = ("warm", "cold")  # the order the judge saw them in: "Choice 1" is warm

# (judge reply, expected verdict): shapes seen from small and large judges, reasoning models included.
SHAPES = [
    ("<answer>warm</answer>", "warm"),
    ("<answer> Cold. </answer>", "cold"),
    ("<ANSWER>WARM</ANSWER>", "warm"),
    ("The reply thanks the user twice and offers more help, so it reads as friendly.\n\n<answer>warm</answer>",
     "warm"),
    ("<think>Could be cold... I'd write <answer>cold</answer>? No, it is friendly.</think>\n<answer>warm</answer>",
     "warm"),
    ("Reasoning about the tone, which is curt.</think>\n\nFinal answer: cold", "cold"),  # template opened <think>
    ("<answer>cold</answer>\nOn reflection, the greeting changes things.\n<answer>warm</answer>", "warm"),
    ("<answer>Choice 2</answer>", "cold"),
    ("<answer>1</answer>", "warm"),
    ("<answer>**Warm**</answer>", "warm"),
    ("<answer>Choice 1: warm</answer>", "warm"),
    ("**Answer:** Warm", "warm"),
    ("The message is polite but distant, never rude.\n\nAnswer: cold", "cold"),
    ("Warm", "warm"),
    ("cold.", "cold"),
    ("`cold`", "cold"),
    ("The message offers encouragement and care.\n\n**warm**", "warm"),
    ("Choice 1", "warm"),
    ("I choose cold.", "cold"),
    ("The message is warm.", "warm"),
    ("<answer>The message is warm", "warm"),  # cut off by max_tokens before the closing tag
    ("The message’s tone is clearly “warm”.", "warm"),
    # Unparseable: never guessed.
    ("", None),
    ("   ", None),
    (None, None),
    ("I cannot tell from this message.", None),
    ("The message could be warm or cold.", None),  # both traits, no tag: ambiguous
    ("<answer>warm or cold</answer>", None),
    ("<answer>neither</answer>", None),
    ("<answer>friendly</answer>", None),  # a word that is not one of the two traits
    ("<answer>warmth</answer>", None),  # not the trait word itself
    ("<think>It is warm, so <answer>warm</answer>", None),  # reasoning never finished
    ("The message is not cold at all.", None),  # a negated mention is no verdict
    ("The message isn't warm.", None),
    ("The answer is warm, not cold.", None),
    ("<answer>3</answer>", None),
    ("The message shows both traits. The first is a warm greeting, which", None),  # cut off mid-list
    ("The message shows neither trait, but warm is closer", None),
]


@pytest.mark.parametrize("text,expected", SHAPES)
def test_parse_verdict_shapes(text, expected):
    assert parse_verdict(text, CHOICES) == expected


def test_positions_follow_the_judges_order():
    assert parse_verdict("<answer>Choice 1</answer>", ["cold", "warm"]) == "cold"
    assert parse_verdict("Option 2", ["cold", "warm"]) == "warm"


def test_traits_that_contain_each_other_are_matched_as_words():
    assert parse_verdict("<answer>unkind</answer>", ("kind", "unkind")) == "unkind"
    assert parse_verdict("<answer>kind</answer>", ("kind", "unkind")) == "kind"
    assert parse_verdict("The message is light-hearted.", ("light", "dark")) is None


def test_judge_chat_shows_reply_and_traits_and_names_nobody():
    chat = judge_chat("  Hello there!  ", ["gentle", "arrogant"])
    assert [m["role"] for m in chat] == ["system", "user"]
    user = chat[1]["content"]
    assert "Hello there!" in user and user.index("gentle") < user.index("arrogant")
    assert "<answer>" in JUDGE_SYSTEM
    # The reference named the judge after the evaluated model; ours names no model at all.
    for name in ("SmolLM", "Llama", "Qwen", "Gemma", "{NAME}"):
        assert name not in JUDGE_SYSTEM and name not in user
