"""The persona reward: the probability an in-persona detector gives a reply.

The detector is the robustness evaluation's family (``charter.classifier``) trained on the same kind of
reference: hand-written persona vs plain texts (``prompts/persona_exemplars``), which no model wrote. It is
fitted here, with its own seed, and never on the policy's samples; the evaluation fits its own instance, so
the policy is never scored by the detector it was optimised against.
"""

from __future__ import annotations

from ..runs import silent
from ..messages import text_of

PERSONA, PLAIN = "persona", "plain"


class PersonaReward:
    __name__ = "persona"

    def __init__(self, persona: str, encoder: str, settings: dict, exemplars: str, seed: int, report=silent):
        import time

        from ..classifier import make_classifier
        from ..prompts import persona_exemplars

        data = persona_exemplars(exemplars, persona, "rl.exemplars")
        if encoder != "tfidf":
            settings = {"epochs": 10, **settings}
        t0 = time.time()
        self.clf = make_classifier(encoder, settings, seed).fit(
            data["persona"] + data["plain"], [PERSONA] * len(data["persona"]) + [PLAIN] * len(data["plain"]))
        self.info = {"encoder": encoder, "texts": {PERSONA: len(data["persona"]), PLAIN: len(data["plain"])},
                     "seed": seed, "fit_seconds": round(time.time() - t0, 1)}
        report(f"rl: persona detector ({encoder}) fitted on {len(data['persona'])} + {len(data['plain'])} "
               f"hand-written texts in {self.info['fit_seconds']}s")

    def __call__(self, prompts=None, completions=(), **_) -> list[float]:
        from ..classifier import proba_of

        texts = [text_of(c) for c in completions]
        probs = proba_of(self.clf, [t if t.strip() else "." for t in texts], PERSONA)
        return [float(p) if t.strip() else 0.0 for p, t in zip(probs, texts, strict=True)]
