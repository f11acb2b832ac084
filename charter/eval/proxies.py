"""Cheap, objective coherence proxies the steering sweep scores its replies with: a reply's share of
repeated word bigrams (its log-likelihood under the student is ``backends.hf.reply_logprobs``).

Their own module (rather than beside the coherence judge) so that steering, which coherence reaches through
the conditions, does not import coherence back.
"""

from __future__ import annotations

from ..rewards.coherence import repetition  # noqa: F401  (one definition; the RL guard uses it too)


def normalise(text: str) -> str:
    """Whitespace collapsed (unicode included): a steered model may pad replies with runs of odd spaces,
    which would otherwise look like likely, non-repeating text."""
    return " ".join(text.split())
