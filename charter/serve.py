"""A small OpenAI-compatible HTTP server over one charter backend (standard library only).

Why: it lets any OpenAI client talk to a locally trained model (``charter serve``), and it gives the
``openai`` backend a real server to be tested against, with injectable faults, instead of mocks.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``. One generation runs at a
time (a lock around the model); requests arriving meanwhile wait. The ``model`` field of a request is
ignored: the server serves the one model it was started with. There is no authentication, so it binds to
127.0.0.1 unless told otherwise.

Fault injection (tests): ``server.faults`` is a deque of strings, one consumed per completion request:
``"429"`` (with ``Retry-After: 0``), any other status such as ``"500"``/``"503"``, ``"timeout:<seconds>"``
(sleep, then answer normally) or ``"close"`` (drop the connection without answering).
"""

from __future__ import annotations

import collections
import json
import logging
import random
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .backends import Completion
from .config import ModelSpec, Sampling

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
MAX_BODY = 16 * 1024 * 1024


class RequestError(ValueError):
    """A malformed request: answered with HTTP 400 and this message."""


class ChatServer(ThreadingHTTPServer):
    """The HTTP server; ``faults`` and ``hits`` (requests per path) are there for tests."""

    daemon_threads = True  # a client that hung up must not keep the process alive

    def __init__(self, backend, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None):
        super().__init__((host, port), Handler)
        self.backend = backend
        self.model_name = model_name or getattr(getattr(backend, "spec", None), "model", None) or "charter"
        self.lock = threading.Lock()
        self.faults: collections.deque[str] = collections.deque()
        self.hits: collections.Counter[str] = collections.Counter()
        self._hits_lock = threading.Lock()
        self.created = int(time.time())

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients, e.g. ``http://127.0.0.1:8000/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, path: str) -> None:
        with self._hits_lock:
            self.hits[path] += 1

    def serve_in_background(self) -> threading.Thread:
        """Start ``serve_forever`` in a daemon thread; stop with ``shutdown()`` then ``server_close()``."""
        thread = threading.Thread(target=self.serve_forever, name="charter-serve", daemon=True)
        thread.start()
        return thread

    def complete(self, body: dict) -> dict:
        """Answer one chat-completion request body (already parsed JSON)."""
        chat, prefill = parse_messages(body.get("messages"), bool(body.get("continue_final_message")))
        sampling, seed = parse_sampling(body)
        with self.lock:
            comp: Completion = self.backend.generate([chat], sampling, [prefill] if prefill else None, seed=seed)[0]
            prompt_tokens = self._prompt_tokens(chat, prefill)
        if comp.error:
            raise RuntimeError(comp.error)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": comp.text},
                "finish_reason": "stop" if comp.finished else "length",
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": comp.tokens,
                      "total_tokens": prompt_tokens + comp.tokens},
        }

    def _prompt_tokens(self, chat: list[dict], prefill: str | None) -> int:
        tok = getattr(self.backend, "tokenizer", None)
        prompts = getattr(self.backend, "prompts", None)
        if tok is None or prompts is None:
            return 0
        text = prompts([chat], [prefill] if prefill else None)[0]
        return len(tok(text, add_special_tokens=False).input_ids)


def _text(content, where: str) -> str:
    """Message content as a string: a plain string or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"{where}.content: expected a string or a list of text parts")


def parse_messages(messages, continue_final: bool = False) -> tuple[list[dict], str | None]:
    """The chat and optional prefill: with ``continue_final`` (vLLM's ``continue_final_message``) the last
    message must be an assistant turn, and the reply continues it instead of starting a new one."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list")
    chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role: expected one of {', '.join(sorted(ROLES))}")
        chat.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
    if not continue_final:
        return chat, None
    if chat[-1]["role"] != "assistant":
        raise RequestError("continue_final_message: the last message must be an assistant turn")
    return chat[:-1], chat[-1]["content"]


def _number(body: dict, key: str, default, kind=float, low=None, high=None):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{key}: {value} out of range [{low}, {high}]")
    return value


def parse_sampling(body: dict) -> tuple[Sampling, int]:
    """Sampling settings and seed from a request, with the OpenAI defaults (temperature 1, top_p 1)."""
    if body.get("stream"):
        raise RequestError("stream: streaming is not supported by this server")
    if _number(body, "n", 1, int) != 1:
        raise RequestError("n: only n=1 is supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0),
        # vLLM spells "no top-k" as -1; Sampling uses 0.
        top_k=max(0, _number(body, "top_k", 0, int, -1)),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, float, 0.01),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 256, int, 1),
    )
    # Without a seed every request must sample differently, as with any OpenAI server.
    seed = _number(body, "seed", None, int)
    return sampling, random.randrange(2 ** 31) if seed is None else seed


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
    server: ChatServer

    def log_message(self, fmt, *args):  # route http.server's stderr chatter through logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout fired) while we were generating; nothing left to do.
            log.debug("client %s hung up before the response", self.address_string())

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        kinds = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}
        kind = kinds.get(status, "server_error")
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": str(status)}},
                   headers)

    def do_GET(self):
        self.server.count(self.path)
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                          "created": self.server.created, "owned_by": "charter"}]})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self):
        self.server.count(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)  # read even when refusing, so the kept-alive connection stays in sync
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route POST {self.path}")
        if self._inject_fault():
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise RequestError("body: expected a JSON object")
            result = self.server.complete(body)
        except (RequestError, json.JSONDecodeError) as e:
            return self._error(400, str(e))
        except Exception as e:
            log.exception("generation failed")
            return self._error(500, f"generation failed: {type(e).__name__}: {e}")
        self._send(200, result)

    def _client_gone(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:  # connected, nothing sent yet
            return False
        except OSError:
            return True

    def _inject_fault(self) -> bool:
        """Apply the next queued fault; True when the request has been answered (or dropped) by it."""
        try:
            fault = self.server.faults.popleft()
        except IndexError:
            return False
        log.info("injecting fault %r", fault)
        if fault.startswith("timeout:"):
            time.sleep(float(fault.split(":", 1)[1]))
            # A client that timed out meanwhile has closed the socket: skip generating for nobody.
            if self._client_gone():
                log.info("client hung up during the injected delay; not generating")
                self.close_connection = True
                return True
            return False
        if fault == "close":
            self.close_connection = True
            return True
        status = int(fault)
        self._error(status, f"injected fault {status}", {"Retry-After": "0"} if status == 429 else None)
        return True


def make_server(backend, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None) -> ChatServer:
    """A ChatServer bound to ``host:port`` (port 0 picks a free one; see ``server.url``), not yet serving."""
    return ChatServer(backend, host, port, model_name)


def serve(spec: ModelSpec, host: str = "127.0.0.1", port: int = 8000, report=None) -> None:
    """Load ``spec``'s model and serve it until interrupted (the body of ``charter serve``); ``report`` gets
    one line with the URL once the server is listening."""
    from .backends import make_backend

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: this server has no authentication", host)
    backend = make_backend(spec)
    server = make_server(backend, host, port, model_name=spec.name or spec.model)
    log.info("serving %s at %s (OpenAI-compatible; Ctrl-C stops)", server.model_name, server.url)
    if report is not None:  # the socket is bound and listening: clients can connect from here on
        report(f"charter: serving {server.model_name} at {server.url}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        backend.close()
