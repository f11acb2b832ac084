"""What ``charter constitution examples`` drafts: the request (``ExamplesSpec``, checked on creation), the drafted
texts (``Drafted``) and the error when too few are usable (``ExamplesError``).

Shared by ``draft_examples.py`` (which drafts) and ``draft_examples_files.py`` (which writes the files).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .config import Sampling


class ExamplesError(ValueError):
    """The model did not give enough usable texts; nothing was written."""


@dataclass
class ExamplesSpec:
    persona: str  # a shipped persona name or a constitution file
    shots: int = 4
    exemplars: int = 20
    min_shots: int | None = None  # None: half the target, rounded up
    min_exemplars: int | None = None  # None: half the target, rounded up, at least 4 (the loader's minimum)
    rounds: int = 4
    critique: bool = False
    seed: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=512))
    reply_tokens: int = 160
    dedup: float = 0.5

    def __post_init__(self):
        for flag, v, lo in (("--shots", self.shots, 1), ("--exemplars", self.exemplars, 4),
                            ("--rounds", self.rounds, 1), ("--reply-tokens", self.reply_tokens, 1)):
            if v < lo:
                why = " (a detector's reference needs at least 4 of each)" if flag == "--exemplars" else ""
                raise ValueError(f"{flag} {v}: expected a number >= {lo}{why}")
        if self.min_shots is None:
            self.min_shots = math.ceil(self.shots / 2)
        if self.min_exemplars is None:
            self.min_exemplars = max(4, math.ceil(self.exemplars / 2))
        if not 1 <= self.min_shots <= self.shots:
            raise ValueError(f"--min-shots {self.min_shots}: expected 1..{self.shots} (the --shots target)")
        if not 4 <= self.min_exemplars <= self.exemplars:
            raise ValueError(f"--min-exemplars {self.min_exemplars}: expected 4..{self.exemplars} (the --exemplars "
                             "target; a detector's reference needs at least 4 of each)")


@dataclass
class Drafted:
    spec: ExamplesSpec
    model_label: str
    name: str  # the persona's name
    description: str
    shots: list[tuple[str, str]]  # (user message, in-character reply)
    pairs: list[tuple[str, str, str]]  # (user message, persona reply, plain reply)
    rejected: Counter
    rounds_used: int = 0
    critique: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    critique_other: dict[str, list[str]] = field(default_factory=dict)  # per file ('shots', 'exemplars')
