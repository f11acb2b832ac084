"""Evaluations of a trained character (``charter eval NAME CONFIG``; ``charter eval all``; ``charter report``).

- ``elo``: ratings from pairwise comparisons (reference Elo, Bradley-Terry, bootstrap CIs, run comparison);
  pure Python/numpy, no torch.
- ``judge``: the revealed-preference judge prompt and a robust verdict parser.
- ``preferences``: revealed preferences (trait Elo) for base/trained/other models.
- ``conditions``: the compared conditions: base, prompted, steered, distilled, trained.
- ``steering``: the activation-steering baseline (contrastive direction, hooks, coefficient sweep).
- ``proxies``: the cheap coherence proxies its sweep scores replies with (log-likelihood, repetition).
- ``classifier``: persona classifiers (embedded MiniLM, any HF encoder, TF-IDF baseline).
- ``robustness``: break-character attacks and the prefill attack, scored on held-out prompts.
- ``coherence``: pairwise LLM-judge coherence, both orders, consistent verdicts only.
- ``capabilities``: general benchmarks through lm-evaluation-harness (+ a tiny local task in ``tasks/``).
- ``report``: one self-contained HTML page (``html``: its table/figure helpers); ``all``: every evaluation,
  then the report. The list and order of evaluations is ``charter.layout.EVALUATIONS``.
"""
