"""Distillation filters: what is kept, trimmed or dropped, and counted."""

from collections import Counter

from charter.stages.distill import replace_name, teacher_text, trim_to_sentence, usable


def test_code_answers_are_not_dropped():
    counts = Counter()
    answer = "Here you go:\n```python\nprint('hi')\n```"
    assert usable("teacher", answer, True, "drop", counts) == answer and not counts  # the reference dropped it


def test_truncated_answers_dropped_or_trimmed_and_counted():
    counts = Counter()
    assert usable("teacher", "One. Two and thr", False, "drop", counts) is None
    assert usable("student", "One. Two and thr", False, "trim", counts) == "One."
    assert usable("student", "no sentence end", False, "trim", counts) is None
    assert usable("teacher", "", True, "drop", counts) is None
    assert counts == Counter(teacher_truncated=1, student_trimmed_kept=1, student_truncated=1, teacher_empty=1)


def test_reasoning_and_names():
    assert teacher_text("<think>plan</think>\nHello!", reasoning=True, think_end="</think>") == "Hello!"
    assert teacher_text("still thinking", reasoning=True, think_end="</think>") is None
    assert teacher_text("<think>x</think> Hi", reasoning=False, think_end="</think>") == "Hi"
    assert replace_name("I am ChatGLM, not ChatGLMX.", "ChatGLM", "SmolLM") == "I am SmolLM, not ChatGLMX."
    assert trim_to_sentence('She said "yes." Then') == 'She said "yes."'
