"""The openai backend against a real OpenAI-compatible server (charter.serve) running the embedded model.

No mocks: failures are injected through the server's ``faults`` queue, and the server's ``hits`` counter
shows how many requests the backend really sent.
"""

import json
import logging
import os
import time
import urllib.request

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from charter.backends import Completion  # noqa: E402
from charter.backends.openai_api import BackendError, OpenAIBackend, backoff_delay  # noqa: E402
from charter.config import ModelSpec, Sampling  # noqa: E402

COMPLETIONS = "/v1/chat/completions"
GREEDY = Sampling(temperature=0.0, max_tokens=8)
HELLO = [{"role": "user", "content": "Say hello."}]
SECRET = "sk-charter-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def server():
    from charter.backends.hf import TransformersBackend
    from charter.serve import make_server

    backend = TransformersBackend(ModelSpec(model="embedded", batch_size=4))
    srv = make_server(backend)
    srv.serve_in_background()
    yield srv
    srv.shutdown()
    srv.server_close()
    backend.close()


@pytest.fixture(autouse=True)
def clean_faults(request):
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").faults.clear()


def make_client(server, base_url=None, **kw) -> OpenAIBackend:
    extra = {"retry_base": 0.01, **kw.pop("extra", {})}
    spec = ModelSpec(backend="openai", model="embedded", base_url=base_url or server.url,
                     api_key_env="CHARTER_TEST_API_KEY", extra=extra, **kw)
    return OpenAIBackend(spec)


def sent(server, path=COMPLETIONS) -> int:
    return server.hits[path]


def test_generates_with_and_without_system(server):
    client = make_client(server)
    chats = [HELLO, [{"role": "system", "content": "You are terse."}, *HELLO]]
    out = client.generate(chats, GREEDY)
    assert len(out) == 2
    for c in out:
        assert c.text and c.tokens > 0 and c.error is None
        assert c.finished == (c.tokens < GREEDY.max_tokens)
    client.close()


def test_concurrent_results_keep_input_order(server):
    chats = [[{"role": "user", "content": q}] for q in ("Name a colour.", "What is 2+2?", "Say hi.", "Name a fruit.")]
    short = Sampling(temperature=0.0, max_tokens=4)
    parallel = make_client(server, max_concurrency=4).generate(chats, short)
    one_by_one = [make_client(server, max_concurrency=1).generate([c], short)[0] for c in chats]
    assert [c.text for c in parallel] == [c.text for c in one_by_one]
    assert len({c.text for c in parallel}) > 1  # different prompts, so a mix-up would show


def test_prefill_continues_the_assistant_turn(server):
    out = make_client(server).generate([HELLO], GREEDY, prefills=["Hello there, friend"])[0]
    with server.lock:
        direct = server.backend.generate([HELLO], GREEDY, prefills=["Hello there, friend"])[0]
    assert out.text == direct.text


def test_429_then_500_then_success(server):
    server.faults.extend(["429", "500"])
    before = sent(server)
    out = make_client(server, max_retries=3).generate([HELLO], GREEDY)
    assert sent(server) - before == 3
    assert out[0].text and out[0].error is None


def test_timeout_and_dropped_connection_are_retried(server):
    # The timeout must also cover the final, real generation: 2 s leaves room on a busy 2-core machine.
    server.faults.extend(["timeout:4", "close"])
    before = sent(server)
    start = time.monotonic()
    out = make_client(server, timeout=2.0, max_retries=2).generate([HELLO], Sampling(temperature=0, max_tokens=1))
    assert sent(server) - before == 3
    assert out[0].text and time.monotonic() - start >= 2.0


def test_persistent_500_raises_without_leaking_the_key(server, monkeypatch, caplog):
    monkeypatch.setenv("CHARTER_TEST_API_KEY", SECRET)
    server.faults.extend(["500"] * 3)
    client = make_client(server, max_retries=2)
    before = sent(server)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as err:
        client.generate([HELLO], GREEDY)
    msg = str(err.value)
    assert sent(server) - before == 3
    assert server.url in msg and "3 attempts" in msg and "HTTP 500" in msg
    assert SECRET not in msg and SECRET not in repr(client) and SECRET not in caplog.text


def test_on_error_empty_returns_a_failed_completion(server):
    server.faults.extend(["503", "503"])
    client = make_client(server, max_retries=1, max_concurrency=1, extra={"on_error": "empty"})
    failed, ok = client.generate([HELLO, HELLO], GREEDY)
    assert failed == Completion(text="", finished=False, tokens=0, error=failed.error)
    assert "2 attempts" in failed.error and "HTTP 503" in failed.error
    assert ok.text and ok.error is None


def test_client_errors_are_not_retried(server):
    # A request-specific 400 fails only its item under on_error="empty" ...
    bad = [{"role": "tool", "content": "not a chat role"}]
    before = sent(server)
    out = make_client(server, extra={"on_error": "empty"}).generate([bad], GREEDY)[0]
    assert sent(server) - before == 1
    assert not out.finished and "HTTP 400" in out.error and "1 attempt" in out.error
    # ... while a wrong URL (404) is a configuration error and always raises, after one request.
    wrong = server.url.replace("/v1", "/nope/v1")
    with pytest.raises(BackendError, match="HTTP 404"):
        make_client(server, base_url=wrong, extra={"on_error": "empty"}).generate([HELLO], GREEDY)
    assert server.hits["/nope/v1/chat/completions"] == 1


def test_models_and_health_endpoints(server):
    base = server.url.removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
        assert json.load(r) == {"status": "ok"}
    with urllib.request.urlopen(f"{server.url}/models", timeout=5) as r:
        assert json.load(r)["data"][0]["id"] == "embedded"


def test_request_kwargs_send_only_non_neutral_sampling():
    client = OpenAIBackend(ModelSpec(backend="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    neutral = client.request_kwargs(HELLO, Sampling(top_k=0, repetition_penalty=1.0), None, 7)
    assert "extra_body" not in neutral and neutral["seed"] == 7 and neutral["model"] == "m"
    tuned = client.request_kwargs(HELLO, Sampling(top_k=40, repetition_penalty=1.1), "Hi", 0)
    assert tuned["extra_body"] == {"top_k": 40, "repetition_penalty": 1.1, "continue_final_message": True,
                                   "add_generation_prompt": False}
    assert tuned["messages"][-1] == {"role": "assistant", "content": "Hi"}
    with pytest.raises(ValueError, match="unknown extra key 'retry_bse'"):
        OpenAIBackend(ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", extra={"retry_bse": 1}))


def test_backoff_delay():
    assert backoff_delay(0, 0.5, 20.0, retry_after=0.0) == 0.0
    assert backoff_delay(3, 0.5, 20.0, retry_after=120.0) == 20.0  # a server's Retry-After is capped
    for retry in range(8):
        full = min(20.0, 0.5 * 2 ** retry)
        assert full / 2 <= backoff_delay(retry, 0.5, 20.0) <= full
