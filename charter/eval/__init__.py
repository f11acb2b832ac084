"""Evaluations of a trained character.

- ``elo``: ratings from pairwise comparisons (reference Elo, Bradley-Terry, bootstrap CIs, run comparison);
  pure Python/numpy, no torch.
- ``judge``: the judge prompt and a robust verdict parser for revealed preferences.
- ``preferences``: revealed preferences, ``charter eval preferences CONFIG [key=value ...]``.
"""
