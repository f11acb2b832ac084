"""The CLI's commands other than the stages, ``train`` and ``eval``: each one entry of ``COMMANDS`` (its
arguments and what it runs). Like ``charter.cli``, only these print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_table import Command


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- constitution

def _backends(scripted: bool) -> list[str]:
    """The config's backends (``ModelSpec.backend``), the scripted test backend only where asked for."""
    import typing

    from .config import Backend

    names = list(typing.get_args(Backend))
    return names if scripted else names[: names.index("scripted")]


def _backend_args(p: argparse.ArgumentParser, backends: list[str], model_help: str) -> None:
    """The model a drafting command asks: backend, model, server, dtype, temperature (draft and examples)."""
    from .config import ModelSpec

    p.add_argument("--backend", default=ModelSpec.backend, choices=backends)
    p.add_argument("--model", default="embedded", help=model_help)
    p.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: variable holding the key")
    p.add_argument("--dtype", default="auto", help="local backends: auto (bf16 where native, else float32), "
                   "bfloat16, float16 or float32")
    p.add_argument("--temperature", type=float, default=0.7)


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
    _backend_args(d, _backends(scripted=False), "'embedded', a model dir, a hub id, or a server's model")
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
    _backend_args(e, _backends(scripted=True), "'embedded', a model dir, a hub id, a server's "
                  "model, or the scripted backend's rule file")
    e.add_argument("--max-tokens", type=int, default=512, help="per list of messages or review")
    e.add_argument("--reply-tokens", type=int, default=160, help="per reply")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--force", action="store_true", help="overwrite the files in the output folder")


def _constitution_args(c: argparse.ArgumentParser) -> None:
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


# ------------------------------------------------------------------------------------------- models

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


# ------------------------------------------------------------------------------------------- commands

def _config_show_args(cf: argparse.ArgumentParser) -> None:
    cfsub = cf.add_subparsers(dest="action", metavar="ACTION", required=True)
    cs = cfsub.add_parser("show", help="print the config (defaults, then CONFIG, then overrides) as YAML with "
                                       "each key's help as a comment")
    cs.add_argument("config", nargs="?", help="run config YAML (default: the built-in defaults)")
    cs.add_argument("overrides", nargs="*", help="key=value overrides, e.g. distill.samples_per_prompt=2")


def _config_show(args) -> int:
    from .config import load_config
    from .config_show import show

    print(show(load_config(args.config, args.overrides)), end="")
    return 0


def _chat_parser(ch: argparse.ArgumentParser) -> None:
    ch.add_argument("model", nargs="?", help="run name/dir, model dir, hub id or 'embedded' (the default); with "
                    "--blend, the base model (default: the adapters' own)")
    ch.add_argument("--blend", metavar="A:W,B:W", help="persona adapters (runs or adapter folders) blended at these "
                    "weights, e.g. loving:0.7,mathematical:0.3")
    ch.add_argument("--system", help="system prompt")
    ch.add_argument("--max-tokens", type=int, default=512)
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")


def _chat(args) -> int:
    _chat_args(args)
    from .chat import load_chat_model, stream_reply

    model, tok, ref = load_chat_model(args.model, args.blend)
    history = [{"role": "system", "content": args.system}] if args.system else []
    scripted = list(args.message or [])
    interactive = not scripted
    if interactive:
        print(f"chatting with {ref} (empty line or Ctrl-D to quit)", file=sys.stderr)
    while scripted or interactive:
        if scripted:
            text = scripted.pop(0)
            print(f"> {text}")
        else:
            try:
                text = input("> ")
            except EOFError:
                break
        if not text.strip():
            break
        history.append({"role": "user", "content": text})
        reply = []
        for piece in stream_reply(model, tok, history, args.max_tokens, args.temperature):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0


def _blend_parser(b: argparse.ArgumentParser) -> None:
    b.add_argument("a", nargs="?")
    b.add_argument("b", nargs="?")
    b.add_argument("--adapters", nargs="+", metavar="ADAPTER:WEIGHT", help="runs or LoRA folders with weights, e.g. "
                   "loving:0.7 mathematical:0.3; writes one LoRA adapter (sum of weighted deltas, exact)")
    b.add_argument("--base", help="--adapters: the base model, when the adapters do not record it")
    b.add_argument("--weight", type=float, default=0.5)
    b.add_argument("-o", "--output", required=True)


def _empty_output(output: str) -> Path:
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"-o {output}: already exists and is not an empty folder; not overwriting")
    return out


def _blend(args) -> int:
    from .blend import blend_models, parse_blend, resolve_adapter, save_blend

    if args.adapters:
        if args.a is not None:
            raise ValueError(f"blend: --adapters takes every parent as ADAPTER:WEIGHT; unexpected argument {args.a!r}")
        spec = parse_blend(args.adapters)
        for ref, _ in spec:
            resolve_adapter(ref)
        print(save_blend(spec, _empty_output(args.output), args.base))
        return 0
    if args.a is None or args.b is None:
        raise ValueError("blend: expected two models A B (with --weight), or --adapters A:W B:W")
    if not 0.0 <= args.weight <= 1.0:
        raise ValueError(f"--weight {args.weight}: expected a value between 0 and 1")
    _model_arg(args.a, "A")
    _model_arg(args.b, "B")
    _empty_output(args.output)
    print(blend_models(args.a, args.b, args.weight, args.output))
    return 0


def _serve_parser(sv: argparse.ArgumentParser) -> None:
    sv.add_argument("model", nargs="?", default="embedded")
    sv.add_argument("--adapter")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)


def _serve(args) -> int:
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

    serve(ModelSpec(model=args.model, adapter=args.adapter, batch_size=8), args.host, args.port, report=_stderr)
    return 0


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run name or run folder")


def _report(args) -> int:
    from .eval.report import build
    from .runs import resolve_run

    print(build(resolve_run(args.run)))
    return 0


def _export_parser(ex: argparse.ArgumentParser) -> None:
    _run_arg(ex)
    ex.add_argument("--to", required=True, help="folder to write (must not exist, or be empty)")
    ex.add_argument("--hub", metavar="REPO", help="also push the folder to this Hugging Face repo (user/name)")
    ex.add_argument("--gguf", nargs="?", const="f16", metavar="TYPE",
                    help="also convert to GGUF with llama.cpp's converter (f16 by default; f32, bf16, q8_0, auto)")


def _export(args) -> int:
    from .export import export
    from .runs import resolve_run

    print(export(resolve_run(args.run), args.to, hub=args.hub, gguf=args.gguf, report=_stderr))
    return 0


BEFORE = (  # the commands listed before the stages in `charter --help`
    Command("constitution", "list, show, validate or create persona constitutions", _constitution_args, _constitution),
    Command("config", "show a resolved run config with the help of every key", _config_show_args, _config_show),
)
AFTER = (  # after the stages and `train`, before `eval`
    Command("chat", "chat with a model or a run's final model", _chat_parser, _chat),
    Command("blend", "interpolate two persona models: (1-w)*A + w*B; or, with --adapters, blend persona adapters "
            "into one adapter", _blend_parser, _blend),
    Command("serve", "serve a model over an OpenAI-compatible HTTP API (for tests and demos)", _serve_parser, _serve),
)
LAST = (  # after `eval`
    Command("report", "one self-contained HTML page with every evaluation of a run", _run_arg, _report),
    Command("export", "a run's merged model + persona adapter with a model card, as one folder", _export_parser,
            _export),
)
