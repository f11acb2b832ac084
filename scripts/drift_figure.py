"""The long-conversation figure, drawn from a results file only: in-persona rate by assistant turn per condition
with bootstrap 95% CIs over conversations (and the activation monitor's projection, when it ran), the
break-character turn dashed.

    .venv/bin/python scripts/drift_figure.py docs/results/cpu-sarcastic-noattack.json -o docs/cpu-sarcastic-drift.png

The same drawing ``charter eval drift`` writes into the run folder, here from the summary kept in the results file
(``scripts/results.py collect``). Records the figure in docs/results/figures.json, which the README test reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from charter.eval.drift_summary import plot
from charter.results import record_figure


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results file holding a 'drift' summary")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    doc = json.loads(Path(args.results).read_text())
    if "drift" not in doc:
        sys.exit(f"drift_figure: {args.results}: no 'drift' summary (collect it after `charter eval drift`)")
    plot(Path(args.output), doc["drift"])
    record_figure(args.output, [args.results], "python scripts/drift_figure.py " + shlex.join(sys.argv[1:]))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
