"""Command line: parses arguments and calls the stage functions. The only module that prints.

Heavy libraries (torch, transformers, TRL) are imported inside the commands that need them, so
``charter --help`` and ``charter constitution ...`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from . import __version__

# Stages in pipeline order: (command, module under charter.stages, help).
STAGES = [
    ("expand", "expand", "write more prompts per trait with a model"),
    ("distill", "distill", "teacher/student generations -> DPO pairs"),
    ("dpo", "dpo", "DPO + LoRA on the distillation pairs, then fold the adapter"),
    ("introspect", "introspect", "self-reflection and self-interaction transcripts -> SFT set"),
    ("sft", "sft", "SFT + LoRA on the introspection transcripts"),
    ("merge", "merge", "fold DPO and SFT into the final model; export one persona adapter"),
]


# Evaluations: name -> (module, function, help).
EVALS = {
    "preferences": ("charter.eval.preferences", "run", "revealed preferences: trait Elo ratings"),
    "steering": ("charter.eval.steering", "fit", "fit the activation-steering baseline (direction + sweep)"),
    "robustness": ("charter.eval.robustness", "run", "break-character attacks and prefill, scored by a classifier"),
    "coherence": ("charter.eval.coherence", "run", "pairwise LLM-judge coherence, trained vs each condition"),
    "capabilities": ("charter.eval.capabilities", "run", "general benchmarks through lm-evaluation-harness"),
    "all": ("charter.eval.all", "run", "every evaluation, then the report"),
}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.samples_per_prompt=2")
    p.add_argument("--force", action="store_true", help="discard this stage's output and redo it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charter", description="Character training for chat models.")
    parser.add_argument("--version", action="version", version=f"charter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("constitution", help="list, show, validate or create persona constitutions")
    csub = c.add_subparsers(dest="action", metavar="ACTION", required=True)
    csub.add_parser("list", help="list shipped personas")
    s = csub.add_parser("show", help="print a persona's constitution")
    s.add_argument("name", help="shipped persona name or file path")
    v = csub.add_parser("validate", help="check a constitution file (exit 0 when valid)")
    v.add_argument("path")
    n = csub.add_parser("new", help="write a new persona file from the template")
    n.add_argument("name")
    n.add_argument("-o", "--output", help="file to write (default: NAME.yaml)")

    for cmd, _, help_ in STAGES:
        _config_args(sub.add_parser(cmd, help=help_))
    _config_args(sub.add_parser("train", help="run every stage, constitution to final model (resumes)"))

    ch = sub.add_parser("chat", help="chat with a model or a run's final model")
    ch.add_argument("model", nargs="?", default="embedded", help="run name/dir, model dir, hub id or 'embedded'")
    ch.add_argument("--system", help="system prompt")
    ch.add_argument("--max-tokens", type=int, default=512)
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")

    b = sub.add_parser("blend", help="interpolate two persona models: (1-w)*A + w*B")
    b.add_argument("a")
    b.add_argument("b")
    b.add_argument("--weight", type=float, default=0.5)
    b.add_argument("-o", "--output", required=True)

    sv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (for tests and demos)")
    sv.add_argument("model", nargs="?", default="embedded")
    sv.add_argument("--adapter")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)

    ev = sub.add_parser("eval", help="evaluations of a run (each resumable, seeded)")
    esub = ev.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for name, (_, _, help_) in EVALS.items():
        _config_args(esub.add_parser(name, help=help_))
    rp = sub.add_parser("report", help="one self-contained HTML page with every evaluation of a run")
    rp.add_argument("run", help="run name or run folder")
    return parser


def _load(args):
    from .config import load_config

    return load_config(args.config, args.overrides)


def _constitution(args) -> int:
    from . import constitution as const

    if args.action == "list":
        for name in const.shipped():
            c = const.load(name)
            print(f"{name:14s} {len(c.traits):2d} traits  {c.description}")
        return 0
    if args.action == "show":
        print(const.load(args.name).to_yaml(), end="")
        return 0
    if args.action == "validate":
        c = const.load_file(args.path)
        n = sum(len(t.all_prompts()) for t in c.traits)
        print(f"{args.path}: valid: persona '{c.name}', {len(c.traits)} traits, {n} prompts")
        return 0
    if args.action == "new":
        out = Path(args.output or f"{args.name}.yaml")
        if out.exists():
            raise FileExistsError(f"{out}: already exists; not overwriting")
        out.write_text(const.new_template(args.name))
        print(out)
        return 0
    return 2


def _stage(cmd: str, args) -> int:
    import json

    cfg = _load(args)
    mod = importlib.import_module(f"charter.stages.{cmd}")
    out = mod.run(cfg, force=args.force)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    print(mod.summary(manifest), file=sys.stderr)
    print(out)
    return 0


def _train(args) -> int:
    from .stages import train

    cfg = _load(args)
    out = train.run(cfg, force=args.force, report=lambda line: print(line, file=sys.stderr))
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command is None:
        parser.print_help()
        return 0
    from .config import ConfigError
    from .constitution import ConstitutionError

    try:
        if args.command == "constitution":
            return _constitution(args)
        if args.command in {s[0] for s in STAGES}:
            return _stage(args.command, args)
        if args.command == "train":
            return _train(args)
        if args.command == "chat":
            from .chat import chat_main

            return chat_main(args)
        if args.command == "blend":
            from .stages.merge import blend

            print(blend(args.a, args.b, args.weight, args.output))
            return 0
        if args.command == "serve":
            from .config import ModelSpec
            from .serve import serve

            serve(ModelSpec(model=args.model, adapter=args.adapter, batch_size=8), args.host, args.port)
            return 0
        if args.command == "eval":
            module, func, _ = EVALS[args.evaluation]
            fn = getattr(importlib.import_module(module), func)
            out = fn(_load(args), force=args.force, report=lambda line: print(line, file=sys.stderr))
            print(out)
            return 0
        if args.command == "report":
            from .eval.report import build

            print(build(args.run))
            return 0
    except (ConfigError, ConstitutionError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"charter: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("charter: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
