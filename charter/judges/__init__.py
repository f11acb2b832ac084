"""Judges: an LLM reads replies and names a verdict. A layer below the evaluations (and any reward model).

- ``verdict.py``: the one verdict parser. Every judge answers in many shapes; the parser walks the same
  evidence for all of them (answer tags outside reasoning, then the last line, then the prose) and asks a
  judge-specific *scheme* what a span names. Unreadable verdicts are None, counted by the caller, never guessed.
- ``trait.py``: which of two traits a reply shows (revealed preferences).
- ``pairwise.py``: which of two replies is more coherent (coherence), and how a pair's two orders combine.

The prompts are data (``charter/prompts/judges.yaml``). Log-prob judging (a small local judge scores its
fixed answers instead of writing one) is the backend capability ``score_options`` (``charter.backends``).
"""
