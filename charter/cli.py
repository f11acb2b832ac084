"""Command line: parses arguments and calls the library. With ``cli_commands``, the only modules that print.

Every command is one ``Command`` (``cli_table``): its arguments and what it runs. The stages and the
evaluations come from the registry (``charter.registry``), so a plugin's stage or evaluation is a command too.
Heavy libraries (torch, transformers, TRL) are imported inside the commands that need them, so
``charter --help`` and ``charter constitution ...`` stay fast.

    charter --help          python -m charter --help
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__, registry
from .cli_commands import AFTER, BEFORE, LAST
from .cli_table import Command


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.samples_per_prompt=2")
    p.add_argument("--force", action="store_true", help="discard this stage's output and redo it")


def _load(args, command: str):
    """The run config, checked for everything ``command`` needs before any work starts."""
    from .config import load_config
    from .preflight import check

    cfg = load_config(args.config, args.overrides)
    check(cfg, command, str(args.config) if args.config is not None else "config", force=args.force)
    return cfg


def _stage_command(stage: registry.Stage) -> Command:
    """One stage, after whatever earlier stage is missing; ``--force`` redoes only this one."""
    def run(args) -> int:
        from .stages import train

        cfg = _load(args, stage.name)
        print(train.run(cfg, force={stage.name} if args.force else False, until=stage.name, report=_stderr))
        return 0

    return Command(stage.name, stage.help, _config_args, run)


def _train(args) -> int:
    from .stages import train

    cfg = _load(args, "train")
    print(train.run(cfg, force=args.force, report=_stderr))
    return 0


def _eval_args(ev: argparse.ArgumentParser) -> None:
    esub = ev.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for e in registry.eval_order():
        ep = esub.add_parser(e.name, help=e.help)
        _config_args(ep)
        if e.cli_args is not None:
            e.cli_args(ep)
    _config_args(esub.add_parser("all", help="every evaluation, then the report"))


def _eval(args) -> int:
    if args.evaluation != "all":
        e = registry.evaluation(args.evaluation)
        if e.cli_overrides is not None:
            args.overrides = [*args.overrides, *e.cli_overrides(args)]
        cfg = _load(args, e.name)
        print(e.run(cfg, force=args.force, report=_stderr))
        return 0
    from .eval.all import run_all

    cfg = _load(args, "all")
    out, failed = run_all(cfg, force=args.force, report=_stderr)
    print(out)
    if failed:
        _stderr(f"charter: error: eval all: {len(failed)} evaluation(s) failed or could not run: "
                f"{', '.join(failed)} (the report marks them)")
        return 1
    return 0


def commands() -> tuple[Command, ...]:
    """Every command, in the order ``charter --help`` lists them."""
    return (*BEFORE, *(_stage_command(s) for s in registry.stages()),
            Command("train", "run every stage, constitution to final model (resumes)", _config_args, _train),
            *AFTER, Command("eval", "evaluations of a run (each resumable, seeded)", _eval_args, _eval), *LAST)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charter", description="Character training for chat models.")
    parser.add_argument("--version", action="version", version=f"charter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for c in commands():
        p = sub.add_parser(c.name, help=c.help)
        c.args(p)
        p.set_defaults(handler=c.run)
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return " ".join(text.split())


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
    from .deps import from_import_error

    try:
        return args.handler(args)
    except (ConfigError, ConstitutionError, OSError, ValueError, RuntimeError, ImportError) as e:
        if args.verbose:
            raise
        if isinstance(e, ImportError):
            e = from_import_error(e) or e
        _stderr(f"charter: error: {_one_line(e)}")
        return 1
    except KeyboardInterrupt:
        _stderr("charter: interrupted (finished work is kept; rerun to resume)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
