"""A judge-free coherence proxy for the robustness replies: how likely the plain base model finds each reply.

    .venv/bin/python scripts/fluency.py RUN [--conditions base prompted ...] [--attacks none ...] [-o out.json]

The command line of ``charter.eval.fluency`` (what it measures and why is described there): prints one line per
condition and, with ``-o``, writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from charter.eval.fluency import ORDER, line, run_fluency


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--conditions", nargs="*", default=list(ORDER))
    ap.add_argument("--attacks", nargs="*", default=["none"], help="which attack cells to score ('none': plain)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("-o", "--output")
    args = ap.parse_args(argv)
    out = run_fluency(args.run, args.conditions, args.attacks, args.boot)
    for cond, o in out.items():
        print(line(cond, o))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
