"""The transformers backend on the real embedded model (SmolLM2-135M): batched, with/without system."""

import copy

import pytest

from charter.backends import merge_system, render_chat, supports_system
from charter.backends.hf import TransformersBackend
from charter.config import ModelSpec, Sampling

GREEDY = Sampling(temperature=0.0, max_tokens=12, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def backend(embedded_path):
    return TransformersBackend(ModelSpec(model=embedded_path, batch_size=4, dtype="float32"))


def test_generates_with_and_without_system_prompt(backend):
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "You are a pirate. Speak like one."},
              {"role": "user", "content": "What is the capital of France?"}]]
    out = backend.generate(chats, GREEDY)
    assert len(out) == 2 and all(o.text for o in out)
    assert "Paris" in out[0].text
    prompts = backend.prompts(chats)
    assert "pirate" in prompts[1] and "pirate" not in prompts[0]  # our system prompt replaced the default
    assert "named SmolLM" in prompts[0] and "named SmolLM" not in prompts[1]
    assert all(0 < o.tokens <= 12 for o in out)


def test_batched_equals_one_at_a_time(backend):
    chats = [[{"role": "user", "content": q}] for q in ("Name a colour.", "Say hello in French, please.",
                                                        "What is 2 + 2?", "Name a fruit that is yellow.",
                                                        "Write one word about the sea.")]
    batched = backend.generate(chats, GREEDY)  # batch_size 4: a full batch and a padded one
    single = [backend.generate([c], GREEDY)[0] for c in chats]
    assert [b.text for b in batched] == [s.text for s in single]


def test_truncation_is_reported(backend):
    out = backend.generate([[{"role": "user", "content": "Write a long story about a dragon."}]],
                           Sampling(temperature=0.0, max_tokens=4))
    assert out[0].finished is False and out[0].tokens == 4


def test_sampling_is_seeded(backend):
    chats = [[{"role": "user", "content": "Tell me a fun fact."}]] * 2
    s = Sampling(temperature=1.0, max_tokens=10)
    assert [o.text for o in backend.generate(chats, s, seed=3)] == [o.text for o in backend.generate(chats, s, seed=3)]


def test_prefill_continues_the_assistant_turn(backend):
    chats = [[{"role": "user", "content": "Count from one to five."}]]
    prompt = render_chat(backend.tokenizer, chats[0], "One, two,")
    assert prompt.endswith("<|im_start|>assistant\nOne, two,")
    out = backend.generate(chats, GREEDY, prefills=["One, two,"])
    assert "three" in out[0].text.lower()


def test_templates_without_system_role_get_it_merged(backend):
    tok = copy.deepcopy(backend.tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "<|im_start|>{{m.role}}\n{{m.content}}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert not supports_system(tok)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = render_chat(tok, chat)
    assert "<|im_start|>user\nBe brief.\n\nHi<|im_end|>" in text
    assert merge_system(chat)[0] == {"role": "user", "content": "Be brief.\n\nHi"}


def test_score_options_matches_a_direct_computation(backend):
    import torch

    chat = [{"role": "user", "content": "Is Paris the capital of France? Answer yes or no."}]
    scores = backend.score_options([chat, chat], [["yes", "no"], ["Yes", "No"]], prefill="")
    assert len(scores) == 2 and all(len(s) == 2 for s in scores)
    tok, model = backend.tokenizer, backend.model
    p = tok(render_chat(tok, chat), add_special_tokens=False).input_ids
    o = tok("Yes", add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + o])).logits.float(), -1)[0]
    direct = sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(o))
    assert abs(direct - scores[1][0]) < 1e-3


def test_single_token_options_read_one_distribution_and_match_continuations(backend):
    """Ratings 1..5 are single tokens: scored from one next-token distribution, they equal the one-by-one
    continuation scores; a chat with multi-token options in the same call still gets those."""
    from charter.backends.hf import continuation_logprobs

    chat = [{"role": "user", "content": "Rate this from 1 to 5: 'The sky is green.'"}]
    digits, words = ["1", "2", "3", "4", "5"], ["not at all", "completely true"]
    fast = backend.score_options([chat, chat], [digits, words], prefill="<answer>")
    tok = backend.tokenizer
    p = tok(render_chat(tok, chat, "<answer>"), add_special_tokens=False).input_ids
    assert all(len(tok(d, add_special_tokens=False).input_ids) == 1 for d in digits)
    slow = [sum(lp) for lp in continuation_logprobs(
        backend.model, tok, [(p, tok(o, add_special_tokens=False).input_ids) for o in digits + words], 2)]
    assert fast[0] == pytest.approx(slow[:5], abs=1e-3) and fast[1] == pytest.approx(slow[5:], abs=1e-3)


# --- shared-prefix reuse, per-row progress, dtype choice ----------------------------------------------

def test_shared_prefix_len_leaves_every_row_a_token():
    from charter.backends.hf import shared_prefix_len

    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows: the last token stays each row's own
    assert shared_prefix_len([[7], [7, 8]]) == 0
    assert shared_prefix_len([[1, 2], [3, 2]]) == 0


def test_prefix_reuse_gives_the_same_greedy_text(embedded_path, backend):
    from charter import constitution as const

    system = const.teacher_system_prompt(const.load("sarcastic"), "SmolLM")
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": q}]
             for q in ("What is 2 + 2?", "Can you recommend a book for a long train ride?", "Hi!")]
    reuse = TransformersBackend(ModelSpec(model=embedded_path, batch_size=4, dtype="float32", prefix_cache=True),
                                model=backend.model, tokenizer=backend.tokenizer)
    plain = TransformersBackend(ModelSpec(model=embedded_path, batch_size=4, dtype="float32", prefix_cache=False),
                                model=backend.model, tokenizer=backend.tokenizer)
    ids = reuse.tokenizer(reuse.prompts(chats), add_special_tokens=False).input_ids
    from charter.backends.hf import MIN_SHARED_PREFIX, shared_prefix_len

    assert shared_prefix_len(ids) > 400 > MIN_SHARED_PREFIX  # the constitution really is the shared part
    a, b = reuse.generate(chats, GREEDY), plain.generate(chats, GREEDY)
    assert [x.text for x in a] == [y.text for y in b] and all(x.text for x in a)
    assert [x.finished for x in a] == [y.finished for y in b]


def test_progress_moves_per_row_and_counts_every_row_once(backend):
    calls = []
    chats = [[{"role": "user", "content": q}] for q in ("Say yes.", "Write a long poem about the sea.",
                                                        "Say no.", "Name a colour.")]
    backend.generate(chats, Sampling(temperature=0.0, max_tokens=24, repetition_penalty=1.0),
                     progress=calls.append)
    assert sum(calls) == 4
    assert len(calls) > 1  # short answers are reported when they end, before the long one finishes


def test_auto_dtype_follows_the_hardware_and_explicit_values_win():
    import torch

    from charter.hardware import native_bf16, resolve_dtype, torch_dtype

    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert native_bf16("cpu") == native
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")
    assert resolve_dtype("bf16") == "bfloat16" and torch_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="dtype 'float8'"):
        resolve_dtype("float8")
