"""The judge reward: an LLM judge rates how strongly a reply shows the persona's traits, 1..5, mapped to 0..1.

Any backend: in ``logprob`` mode (small local judges) the judge scores the five digits after ``<answer>`` and
the reward is the expected rating; in ``generate`` mode it writes a verdict, parsed by the judges' one parser,
and an unreadable verdict scores 0 (counted in ``unreadable``).
"""

from __future__ import annotations

from ..messages import text_of, user_of


class JudgeReward:
    __name__ = "judge"

    def __init__(self, spec, traits: list[str], mode: str = "logprob"):
        from ..backends import SCORE_OPTIONS, make_backend, require

        if mode not in ("logprob", "generate"):
            raise ValueError(f"rl.judge_mode: expected logprob or generate, got {mode!r}")
        if mode == "logprob":
            require(spec, SCORE_OPTIONS, "rl.judge_mode=logprob (the judge scores the ratings locally)")
        self.traits, self.mode, self.unreadable = traits, mode, 0
        self.backend = make_backend(spec)

    def __call__(self, prompts=(), completions=(), **_) -> list[float]:
        from ..judges.scale import PREFILL, SCORES, expected_score, judge_chat, parse_score

        chats = [judge_chat(user_of(p), text_of(c), self.traits) for p, c in zip(prompts, completions, strict=True)]
        if self.mode == "logprob":
            scores = self.backend.score_options(chats, [list(SCORES)] * len(chats), prefill=PREFILL)
            return [(expected_score(s) - 1) / 4 for s in scores]
        from ..config import Sampling

        out = []
        for done in self.backend.generate(chats, Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=96)):
            score = parse_score(done.text)
            self.unreadable += score is None
            out.append(0.0 if score is None else (score - 1) / 4)
        return out

    def close(self) -> None:
        self.backend.close()
