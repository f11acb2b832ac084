"""Command line: parses arguments and calls the stage functions. The only module that prints.

Heavy libraries (torch, transformers, TRL) are imported inside the commands that need them, so
``charter --help`` and ``charter constitution ...`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .layout import EVALUATIONS, STAGE_NAMES, STAGES


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="run config YAML (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.samples_per_prompt=2")
    p.add_argument("--force", action="store_true", help="discard this stage's output and redo it")


def _draft_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("description", help='one line, e.g. "a patient chess coach who explains every move"')
    d.add_argument("-o", "--output", required=True, help="YAML file to write (its name is the persona's name)")
    d.add_argument("--name", help="persona name (default: from the output file's name)")
    d.add_argument("--examples", help="a few example traits: one a line, or a constitution file")
    d.add_argument("--critique", action="store_true", help="ask the model to flag vague, overlapping or "
                   "untestable traits (written as comments)")
    d.add_argument("--traits", type=int, default=10, help="traits wanted (default 10)")
    d.add_argument("--prompts", type=int, default=5, help="seed prompts per trait (default 5)")
    d.add_argument("--rounds", type=int, default=4, help="generation rounds per pass before giving up")
    d.add_argument("--min-traits", type=int, help="fewer usable traits is an error (default: half of --traits)")
    d.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm"])
    d.add_argument("--model", default="embedded", help="'embedded', a model dir, a hub id, or a server's model")
    d.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    d.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: variable holding the key")
    d.add_argument("--dtype", default="auto", help="local backends: auto (bf16 where native, else float32), "
                   "bfloat16, float16 or float32")
    d.add_argument("--temperature", type=float, default=0.7)
    d.add_argument("--max-tokens", type=int, default=1024, help="per completion")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="overwrite the output file")


def _examples_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("constitution", help="a constitution file (or a shipped persona name, with -o)")
    e.add_argument("-o", "--output", help="folder to write teacher_examples.yaml and exemplars.yaml into (default: "
                   "<stem>.examples/ beside the constitution file, where 'auto' looks)")
    e.add_argument("--shots", type=int, default=4, help="teacher example exchanges wanted (default 4)")
    e.add_argument("--exemplars", type=int, default=20, help="detector exemplars wanted, of each kind: persona and "
                   "plain (default 20)")
    e.add_argument("--min-shots", type=int, help="fewer usable exchanges is an error (default: half of --shots)")
    e.add_argument("--min-exemplars", type=int, help="fewer usable persona/plain pairs is an error (default: half "
                   "of --exemplars, at least 4)")
    e.add_argument("--critique", action="store_true", help="ask the model to flag off-character, not-neutral or "
                   "unhelpful texts (written as comments)")
    e.add_argument("--rounds", type=int, default=4, help="generation rounds before giving up")
    e.add_argument("--backend", default="transformers", choices=["transformers", "openai", "vllm", "scripted"])
    e.add_argument("--model", default="embedded", help="'embedded', a model dir, a hub id, a server's model, or "
                   "the scripted backend's rule file")
    e.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: variable holding the key")
    e.add_argument("--dtype", default="auto", help="local backends: auto (bf16 where native, else float32), "
                   "bfloat16, float16 or float32")
    e.add_argument("--temperature", type=float, default=0.7)
    e.add_argument("--max-tokens", type=int, default=512, help="per list of messages or review")
    e.add_argument("--reply-tokens", type=int, default=160, help="per reply")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--force", action="store_true", help="overwrite the files in the output folder")


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
    _draft_args(csub.add_parser("draft", help="draft a constitution from a one-line description with a model"))
    _examples_args(csub.add_parser("examples", help="draft teacher example exchanges and detector exemplars for "
                                                    "a constitution with a model"))

    cf = sub.add_parser("config", help="show a resolved run config with the help of every key")
    cfsub = cf.add_subparsers(dest="action", metavar="ACTION", required=True)
    cs = cfsub.add_parser("show", help="print the config (defaults, then CONFIG, then overrides) as YAML with "
                                       "each key's help as a comment")
    cs.add_argument("config", nargs="?", help="run config YAML (default: the built-in defaults)")
    cs.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.samples_per_prompt=2")

    for stage in STAGES:
        _config_args(sub.add_parser(stage.name, help=stage.help))
    _config_args(sub.add_parser("train", help="run every stage, constitution to final model (resumes)"))

    ch = sub.add_parser("chat", help="chat with a model or a run's final model")
    ch.add_argument("model", nargs="?", help="run name/dir, model dir, hub id or 'embedded' (the default); with "
                    "--blend, the base model (default: the adapters' own)")
    ch.add_argument("--blend", metavar="A:W,B:W", help="persona adapters (runs or adapter folders) blended at these "
                    "weights, e.g. loving:0.7,mathematical:0.3")
    ch.add_argument("--system", help="system prompt")
    ch.add_argument("--max-tokens", type=int, default=512)
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")

    b = sub.add_parser("blend", help="interpolate two persona models: (1-w)*A + w*B; or, with --adapters, "
                       "blend persona adapters into one adapter")
    b.add_argument("a", nargs="?")
    b.add_argument("b", nargs="?")
    b.add_argument("--adapters", nargs="+", metavar="ADAPTER:WEIGHT", help="runs or LoRA folders with weights, e.g. "
                   "loving:0.7 mathematical:0.3; writes one LoRA adapter (sum of weighted deltas, exact)")
    b.add_argument("--base", help="--adapters: the base model, when the adapters do not record it")
    b.add_argument("--weight", type=float, default=0.5)
    b.add_argument("-o", "--output", required=True)

    sv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (for tests and demos)")
    sv.add_argument("model", nargs="?", default="embedded")
    sv.add_argument("--adapter")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)

    ev = sub.add_parser("eval", help="evaluations of a run (each resumable, seeded)")
    esub = ev.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for e in EVALUATIONS:
        ep = esub.add_parser(e.name, help=e.help)
        _config_args(ep)
        if e.name == "traits":
            ep.add_argument("--data", help="the Anthropic persona evaluations folder (the same as traits.data=DIR)")
    _config_args(esub.add_parser("all", help="every evaluation, then the report"))
    rp = sub.add_parser("report", help="one self-contained HTML page with every evaluation of a run")
    rp.add_argument("run", help="run name or run folder")
    ex = sub.add_parser("export", help="a run's merged model + persona adapter with a model card, as one folder")
    ex.add_argument("run", help="run name or run folder")
    ex.add_argument("--to", required=True, help="folder to write (must not exist, or be empty)")
    ex.add_argument("--hub", metavar="REPO", help="also push the folder to this Hugging Face repo (user/name)")
    ex.add_argument("--gguf", nargs="?", const="f16", metavar="TYPE",
                    help="also convert to GGUF with llama.cpp's converter (f16 by default; f32, bf16, q8_0, auto)")
    return parser


def _load(args, command: str):
    """The run config, checked for everything ``command`` needs before any work starts."""
    from .config import load_config
    from .preflight import check

    cfg = load_config(args.config, args.overrides)
    check(cfg, command, str(args.config) if args.config is not None else "config", force=args.force)
    return cfg


def _model_arg(ref: str, what: str) -> None:
    """A model argument that names a local folder must be a loadable one (before anything is imported)."""
    from .config import ConfigError
    from .preflight import check_model_ref

    try:
        check_model_ref(ref, what)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def _chat_args(args) -> None:
    from .chat import resolve_chat_model

    if args.blend is not None:
        from .blend import parse_blend, resolve_adapter

        for ref, _ in parse_blend(args.blend, "--blend"):
            resolve_adapter(ref, "--blend")
        if args.model is not None:
            _model_arg(args.model, "MODEL")
    else:
        args.model = args.model or "embedded"
    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens {args.max_tokens}: expected a number > 0")
    if args.temperature < 0:
        raise ValueError(f"--temperature {args.temperature}: expected a number >= 0")
    if args.blend is None:
        ref = resolve_chat_model(args.model)
        _model_arg(ref, "MODEL")
        _known_model(ref, args.model)


def _known_model(ref: str, given: str) -> None:
    """A chat model that is neither embedded, packaged, a run nor a local folder must be a hub id in the local
    cache (or on a reachable hub): said at once, before the model stack (seconds of imports) is loaded."""
    from .models import check_hub_model, is_embedded
    from .packaged import packaged
    from .preflight import is_path_like
    from .runs import is_run_name, run_dir

    if is_embedded(ref) or packaged(ref) is not None or is_path_like(ref) or Path(ref).expanduser().exists():
        return
    try:
        check_hub_model(ref)
    except Exception as e:  # noqa: BLE001 - ModelNotFound and the hub's validation errors: one line
        run = f"no run '{given}' ({run_dir(given)} does not exist), and " if is_run_name(given) else ""
        raise FileNotFoundError(f"MODEL {given}: {run}{e}" if run else str(e)) from None


def _report_run(ref: str) -> Path:
    """The run folder ``charter report`` reads and writes: a run name under CHARTER_HOME, or a folder that
    holds a run's stage folders (nowhere else is written)."""
    from .runs import is_run_name, run_dir, run_name_problem

    if is_run_name(ref) and run_dir(ref).is_dir():
        return run_dir(ref)
    if "/" in ref or ref.startswith("~") or ref in (".", ".."):
        p = Path(ref).expanduser()
        if p.is_dir() and (any(p.glob("*/manifest.json")) or any(p.glob("*/config.json"))):
            return p
        raise FileNotFoundError(f"RUN {ref}: not a run folder (expected a run name, or a folder holding stage "
                                "folders such as distill/ with a manifest.json)")
    problem = run_name_problem(ref)
    if problem:
        raise ValueError(f"RUN: {problem}")
    raise FileNotFoundError(f"RUN {ref}: no such run (looked for {run_dir(ref)})")


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
    if args.action == "draft":
        from .draft import run_cli

        out, line = run_cli(args)
        print(line, file=sys.stderr)
        print(out)
        return 0
    if args.action == "examples":
        from .draft_examples import run_cli as examples_cli

        out, line = examples_cli(args)
        print(line, file=sys.stderr)
        print(out)
        return 0
    return 2


def _stage(cmd: str, args) -> int:
    """One stage, after whatever earlier stage is missing; ``--force`` redoes only this one."""
    from .stages import train

    cfg = _load(args, cmd)
    out = train.run(cfg, force={cmd} if args.force else False, until=cmd,
                    report=lambda line: print(line, file=sys.stderr))
    print(out)
    return 0


def _train(args) -> int:
    from .stages import train

    cfg = _load(args, "train")
    out = train.run(cfg, force=args.force, report=lambda line: print(line, file=sys.stderr))
    print(out)
    return 0


def _eval(args) -> int:
    report = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if getattr(args, "data", None):
        args.overrides = [*args.overrides, f"traits.data={args.data}"]
    cfg = _load(args, args.evaluation)
    if args.evaluation == "all":
        from .eval.all import run_all

        out, failed = run_all(cfg, force=args.force, report=report)
        print(out)
        if failed:
            print(f"charter: error: eval all: {len(failed)} evaluation(s) failed or could not run: "
                  f"{', '.join(failed)} (the report marks them)", file=sys.stderr)
            return 1
        return 0
    from .eval.all import evaluation

    print(evaluation(args.evaluation)(cfg, force=args.force, report=report))
    return 0


def _blend_adapters(args) -> int:
    from .blend import parse_blend, resolve_adapter

    if args.a is not None:
        raise ValueError(f"blend: --adapters takes every parent as ADAPTER:WEIGHT; unexpected argument {args.a!r}")
    spec = parse_blend(args.adapters)
    for ref, _ in spec:
        resolve_adapter(ref)
    out = Path(args.output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"-o {args.output}: already exists and is not an empty folder; not overwriting")
    from .blend import save_blend

    print(save_blend(spec, out, args.base))
    return 0


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
        if args.command == "constitution":
            return _constitution(args)
        if args.command == "config":
            from .config import load_config
            from .config_show import show

            print(show(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command in STAGE_NAMES:
            return _stage(args.command, args)
        if args.command == "train":
            return _train(args)
        if args.command == "chat":
            _chat_args(args)
            from .chat import chat_main

            return chat_main(args)
        if args.command == "blend" and args.adapters:
            return _blend_adapters(args)
        if args.command == "blend":
            if args.a is None or args.b is None:
                raise ValueError("blend: expected two models A B (with --weight), or --adapters A:W B:W")
            if not 0.0 <= args.weight <= 1.0:
                raise ValueError(f"--weight {args.weight}: expected a value between 0 and 1")
            _model_arg(args.a, "A")
            _model_arg(args.b, "B")
            out = Path(args.output).expanduser()
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise FileExistsError(f"-o {args.output}: already exists and is not an empty folder; not "
                                      "overwriting")
            from .stages.merge import blend

            print(blend(args.a, args.b, args.weight, args.output))
            return 0
        if args.command == "serve":
            if not 0 <= args.port <= 65535:
                raise ValueError(f"--port {args.port}: expected 0-65535")
            _model_arg(args.model, "MODEL")
            if args.adapter is not None:
                from .preflight import model_dir_problem

                problem = model_dir_problem(args.adapter, adapter=True)
                if problem:
                    raise ValueError(f"--adapter: {problem}")
            from .config import ModelSpec
            from .serve import serve

            serve(ModelSpec(model=args.model, adapter=args.adapter, batch_size=8), args.host, args.port,
                  report=lambda line: print(line, file=sys.stderr, flush=True))
            return 0
        if args.command == "eval":
            return _eval(args)
        if args.command == "export":
            from .export import export

            print(export(_report_run(args.run), args.to, hub=args.hub, gguf=args.gguf,
                         report=lambda line: print(line, file=sys.stderr, flush=True)))
            return 0
        if args.command == "report":
            from .eval.report import build

            print(build(_report_run(args.run)))
            return 0
    except (ConfigError, ConstitutionError, OSError, ValueError, RuntimeError, ImportError) as e:
        if args.verbose:
            raise
        if isinstance(e, ImportError):
            e = from_import_error(e) or e
        print(f"charter: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("charter: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
