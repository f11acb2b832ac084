"""Distillation filters: what is kept, trimmed or dropped, and counted."""

from collections import Counter

import pytest

from charter.config import load_config
from charter.models import self_name
from charter.names import teacher_replacer
from charter.stages.distill import build_pairs, name_replacer, teacher_text, trim_to_sentence, usable


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
    assert trim_to_sentence('She said "yes." Then') == 'She said "yes."'


@pytest.mark.parametrize("ref,name", [
    ("z-ai/glm-4.5-air", "GLM"), ("zai-org/GLM-4.5-Air", "GLM"), ("glm-4.5-air", "GLM"), ("THUDM/chatglm3-6b", "GLM"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen"), ("qwen-2.5-7b-it", "Qwen"), ("meta-llama/Llama-3.1-8B-Instruct", "Llama"),
    ("google/gemma-3-4b-it", "Gemma"), ("mistralai/Mixtral-8x7B-Instruct-v0.1", "Mistral"),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "DeepSeek"), ("allenai/OLMo-2-1124-7B-Instruct", "OLMo"),
    ("microsoft/Phi-3-mini-4k-instruct", "Phi"), ("cognitivecomputations/dolphin-2.9", "Dolphin"),
    ("embedded", "SmolLM"), ("/models/mybot7-v2", "Mybot"),
])
def test_self_name_is_the_family_name(ref, name):
    assert self_name(ref) == name
    assert self_name(ref, "Aria") == "Aria"  # the config's name wins


def test_teacher_names_replaced_in_any_case_and_counted():
    r = teacher_replacer("z-ai/glm-4.5-air", "GLM", "embedded", "SmolLM")
    text = ("I'm ChatGLM (GLM-4.5-Air), a model by Zhipu AI. Some call me glm or Glm; "
            "CHATGLM is my old name. GLMs and glmx are other words.")
    assert r(text) == ("I'm SmolLM (SmolLM), a model by Hugging Face. Some call me SmolLM or SmolLM; "
                       "SmolLM is my old name. GLMs and glmx are other words.")
    assert r.counts == {"ChatGLM": 2, "GLM": 3, "Zhipu AI": 1}
    # Qwen's version is part of its name: "Qwen2.5" goes whole, not as "SmolLM2.5".
    q = teacher_replacer("Qwen/Qwen2.5-72B-Instruct", None, "embedded", "SmolLM")
    assert (q("I am Qwen2.5, also Tongyi Qianwen, from Alibaba Cloud.")
            == "I am SmolLM, also SmolLM, from Hugging Face.")
    # A family name that is also a word is left alone in lower case; the same family replaces nothing.
    ll = teacher_replacer("meta-llama/Llama-3.3-70B-Instruct", None, "Qwen/Qwen2.5-7B-Instruct", "Qwen")
    assert ll("A llama is not Llama 3.1 by Meta AI.") == "A llama is not Qwen by Alibaba Cloud."
    folder = teacher_replacer("/models/teacher-70b", "Teacher", "embedded", "SmolLM")
    assert folder("I am Teacher, a good teacher.") == "I am SmolLM, a good teacher."
    same = teacher_replacer("Qwen/Qwen2.5-72B-Instruct", None, "Qwen/Qwen2.5-7B-Instruct", "Qwen")
    assert same("I am Qwen.") == "I am Qwen." and not same.counts


class _Tok:
    def apply_chat_template(self, msgs, tokenize=True, return_dict=True):
        return {"input_ids": " ".join(m["content"] for m in msgs).split()}


def test_distill_config_names_extra_spellings_and_pairs_count_them():
    cfg = load_config(None, ["distill.teacher.model=z-ai/glm-4.5-air", "student.model=Qwen/Qwen2.5-7B-Instruct",
                             "distill.teacher_names=[Aria]"])
    replace = name_replacer(cfg)
    rows_t = [{"id": "a", "prompt": "Who are you?", "response": "I am aria, built on ChatGLM by zhipu.",
               "finished": True, "source": "general", "trait": None}]
    rows_s = {"a": {"id": "a", "response": "I am Qwen.", "finished": True}}
    pairs, dropped = build_pairs(rows_t, rows_s, cfg, _Tok(), replace)
    assert pairs[0]["chosen"][0]["content"] == "I am Qwen, built on Qwen by Alibaba Cloud."
    assert replace.counts == {"Aria": 1, "ChatGLM": 1, "Zhipu": 1} and not dropped
