"""A scripted backend: replies from rules, no model (like ``llm``'s mock model). For fast tests of stage logic
and for a dry run of a config's plumbing; every stage still has a real end-to-end test on the embedded model.

``model`` is ``echo`` or a YAML/JSON script::

    rules:                       # the first rule whose pattern matches wins
      - match: "(?i)poem"        # a regex searched in the last user message (``in: system`` for the system prompt)
        reply: "Roses are red. {user}"
        finished: false          # reported as cut off by max_tokens (default true)
    default: "Plain: {user}"     # no rule matched; unset: "echo: {user}"

Replies are formatted with ``{user}`` (last user message), ``{system}`` (system prompt or ''), ``{prefill}``
and ``{n}`` (a per-backend counter). As with the real backends the reply is the continuation after a prefill,
without it. Token counts are word counts, clipped to ``max_tokens`` words (then the reply is unfinished).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import ModelSpec, Sampling
from .base import Completion


def load_script(ref: str) -> dict:
    if ref == "echo":
        return {"rules": [], "default": "echo: {user}"}
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"scripted backend: model '{ref}': expected 'echo' or a YAML/JSON script file")
    import yaml

    data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise ValueError(f"{path}: expected a mapping with a 'rules' list and an optional 'default'")
    for i, r in enumerate(data.get("rules", [])):
        if not isinstance(r, dict) or not isinstance(r.get("reply"), str):
            raise ValueError(f"{path}: rules[{i}]: expected a mapping with a 'reply' string")
        re.compile(r.get("match", ""))
    return {"rules": data.get("rules", []), "default": data.get("default", "echo: {user}")}


class ScriptedBackend:
    name = "scripted"

    def __init__(self, spec: ModelSpec):
        self.spec, self.script, self.n, self.sent = spec, load_script(spec.model), 0, []

    def _reply(self, user: str, system: str) -> tuple[str, bool]:
        for rule in self.script["rules"]:
            text = system if rule.get("in") == "system" else user
            if re.search(rule.get("match", ""), text):
                return rule["reply"], bool(rule.get("finished", True))
        return self.script["default"], True

    def generate(self, chats: list[list[dict]], sampling: Sampling, prefills: list[str] | None = None,
                 seed: int = 0, progress=None) -> list[Completion]:
        out = []
        for i, chat in enumerate(chats):
            self.sent.append(chat)
            prefill = (prefills or [""] * len(chats))[i] or ""
            user = next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")
            system = next((m["content"] for m in chat if m["role"] == "system"), "")
            template, finished = self._reply(user, system)
            self.n += 1
            text = template.format(user=user, system=system, prefill=prefill, n=self.n)
            words = list(re.finditer(r"\S+", text))
            if sampling.max_tokens and len(words) > sampling.max_tokens:  # cut after the last word allowed
                text, words, finished = text[:words[sampling.max_tokens - 1].end()], words[:sampling.max_tokens], False
            out.append(Completion(text, finished=finished, tokens=len(words)))
            if progress is not None:
                progress(1)
        return out

    def close(self) -> None:
        pass
