"""The persona reward: the probability an in-persona detector gives a reply.

The detector is the robustness evaluation's family (``charter.classifier``), trained on reference texts no
policy sample is among: hand-written persona vs plain texts (``prompts/persona_exemplars``, the default), or
this run's distillation pairs (the teacher's chosen vs the student's rejected answers). It is fitted here,
with its own seed, and never on the policy's samples; the evaluation fits its own instance, so the policy is
never scored by the detector it was optimised against.
"""

from __future__ import annotations

from ..messages import text_of
from ..runs import silent

PERSONA, PLAIN = "persona", "plain"


def reference(cfg) -> tuple[list[str], list[str], str]:
    """(persona texts, plain texts, where they come from) for ``cfg.rl.reference``."""
    if cfg.rl.reference == "pairs":
        from .. import layout

        rows = layout.pair_texts(cfg)
        return ([c for _, c, _ in rows if c.strip()], [r for _, _, r in rows if r.strip()],
                "distillation pairs (chosen vs rejected)")
    from ..prompts import persona_exemplars

    data = persona_exemplars(cfg.rl.exemplars, cfg.persona, "rl.exemplars")
    return data["persona"], data["plain"], "hand-written exemplars"


class PersonaReward:
    __name__ = "persona"

    def __init__(self, persona_texts: list[str], plain_texts: list[str], encoder: str, settings: dict, seed: int,
                 source: str = "reference texts", report=silent):
        import time

        from ..classifier import make_classifier

        if not persona_texts or not plain_texts:
            raise ValueError(f"rl: the persona reward's reference ({source}) needs persona and plain texts, got "
                             f"{len(persona_texts)} and {len(plain_texts)}")
        if encoder != "tfidf":
            settings = {"epochs": 10, **settings}
        t0 = time.time()
        self.clf = make_classifier(encoder, settings, seed).fit(
            persona_texts + plain_texts, [PERSONA] * len(persona_texts) + [PLAIN] * len(plain_texts))
        self.info = {"encoder": encoder, "source": source, "texts": {PERSONA: len(persona_texts),
                                                                      PLAIN: len(plain_texts)},
                     "seed": seed, "fit_seconds": round(time.time() - t0, 1)}
        report(f"rl: persona detector ({encoder}) fitted on {len(persona_texts)} + {len(plain_texts)} texts "
               f"({source}) in {self.info['fit_seconds']}s")

    def __call__(self, prompts=None, completions=(), **_) -> list[float]:
        from ..classifier import proba_of

        texts = [text_of(c) for c in completions]
        probs = proba_of(self.clf, [t if t.strip() else "." for t in texts], PERSONA)
        return [float(p) if t.strip() else 0.0 for p, t in zip(probs, texts, strict=True)]
