"""Write a run's results file, or check/redraw the README tables drawn from the results files.

    .venv/bin/python scripts/results.py collect RUN -o docs/results/NAME.json --command "..." [--command ...] \
        [--fluency FLUENCY.json] [--note "..."]
    .venv/bin/python scripts/results.py readme --check | --write

See ``charter/results.py`` for what a results file holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from charter import results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("run", help="a run name (under $CHARTER_HOME/runs) or a run folder")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--command", action="append", default=[], help="a command that wrote what the file holds")
    c.add_argument("--fluency", help="the JSON scripts/fluency.py -o wrote for this run")
    c.add_argument("--note", action="append", default=[])
    c.add_argument("--commit", help="the commit whose code measured it (default: this checkout's HEAD)")
    t = sub.add_parser("time", help="run a command once, timed, and write its timing results file")
    t.add_argument("-o", "--output", required=True)
    t.add_argument("--what", required=True)
    t.add_argument("command_line", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    r = sub.add_parser("readme")
    r.add_argument("--readme", default=str(results.ROOT / "README.md"))
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true")
    g.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "collect":
        from charter.runs import run_dir

        run = Path(args.run) if Path(args.run).is_dir() else run_dir(args.run)
        fluency = json.loads(Path(args.fluency).read_text()) if args.fluency else None
        doc = results.collect(run, args.command, fluency, args.note)
        if args.commit:
            doc["commit"] = args.commit
        Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
        print(args.output)
        return 0
    if args.cmd == "time":
        doc = results.timed([c for c in args.command_line if c != "--"], args.what)
        Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{args.output}: {doc['timing']['wall_seconds']} s, exit {doc['timing']['returncode']}")
        return doc["timing"]["returncode"]
    path = Path(args.readme)
    text = path.read_text()
    if args.write:
        path.write_text(results.redraw(text))
        print(f"{path}: {len(results.readme_blocks(text))} tables redrawn")
        return 0
    bad = results.mismatches(text)
    for b in bad:
        print(f"{path}: table 'results {b}' differs from its results file (run scripts/results.py readme --write)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
