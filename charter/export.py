"""``charter export RUN --to DIR [--hub REPO] [--gguf [TYPE]]``: a run's persona model as one shareable folder.

``DIR`` gets the merged model at its root (weights, config, tokenizer, chat template: it loads with
``from_pretrained(DIR)`` and pushes to the hub as a model repo), ``persona-adapter/`` (one LoRA adapter on
the original base that reproduces the merged model), a generated model card ``README.md`` (persona,
constitution, data counts, the evaluations that exist, the commands), ``constitution.yaml`` and
``charter_run.json`` (every stage's manifest). With ``--gguf`` also ``<run>.<type>.gguf``, made by
llama.cpp's converter.

Atomic: everything is written into a hidden sibling folder that is renamed to ``DIR`` only when complete
(and, with ``--hub``, only after the push succeeded); on any error it is removed, so ``DIR`` is either
absent or whole. The hub and the converter are checked before anything is copied, so an unreachable hub or
a missing converter fails in seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .layout import path as output_path
from .runs import manifest_path, silent
from .card import manifests, render, run_record

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "auto")
GGUF_HINT = ("llama.cpp's converter is not installed: git clone https://github.com/ggml-org/llama.cpp && "
             "pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt, then set "
             "LLAMA_CPP_DIR=$PWD/llama.cpp (or put convert_hf_to_gguf.py on PATH)")
REPO_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def find_converter() -> list[str] | None:
    """The command that runs llama.cpp's ``convert_hf_to_gguf.py``: ``$LLAMA_CPP_DIR/convert_hf_to_gguf.py``,
    else the script (or a ``convert-hf-to-gguf`` entry point) on PATH; None when there is none. The PyPI
    ``gguf`` package reads and writes GGUF files but ships no HF converter, so it is not enough."""
    home = os.environ.get("LLAMA_CPP_DIR")
    if home:
        script = Path(home).expanduser() / "convert_hf_to_gguf.py"
        if script.is_file():
            return [sys.executable, str(script)]
    for name in ("convert_hf_to_gguf.py", "convert-hf-to-gguf"):
        found = shutil.which(name)
        if found:  # a .py script runs with this interpreter, which has torch and transformers
            return [sys.executable, found] if found.endswith(".py") else [found]
    return None


def _merged(run: Path) -> dict:
    ms = manifests(run)
    if "merge" not in ms:
        raise RuntimeError(f"RUN {run.name}: the merge stage has not finished ({manifest_path(run / 'merge')} is "
                           "missing): run `charter train CONFIG` (or `charter merge CONFIG`) first")
    for key, marker in (("final_model", "config.json"), ("persona_adapter", "adapter_config.json")):
        p = output_path(run, key)
        if not (p / marker).is_file():
            raise RuntimeError(f"{p}: missing or incomplete; rerun `charter merge CONFIG --force`")
    return ms


def _target(to: str) -> Path:
    out = Path(to).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--to {to}: already exists and is not an empty folder; not overwriting")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--to {to}: the folder {out.parent} does not exist")
    return out


def hub_api(repo: str):
    """An authenticated HfApi that can write ``repo`` (created if missing), or a one-line error saying why
    not: offline mode, the hub unreachable, no token, no permission."""
    from . import deps

    if not REPO_RE.match(repo) or ".." in repo:
        raise ValueError(f"--hub {repo}: expected a hub repo id, 'name' or 'user/name' (letters, digits, '.', "
                         "'_', '-')")
    deps.require("charter export --hub", "huggingface_hub")
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if constants.is_offline_mode():
        raise RuntimeError(f"--hub {repo}: the Hugging Face hub is switched off here (HF_HUB_OFFLINE or "
                           "TRANSFORMERS_OFFLINE is set); unset it on a machine that can reach the hub, or export "
                           "without --hub and upload the folder later (huggingface-cli upload REPO DIR)")
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
    except LocalTokenNotFoundError:
        raise RuntimeError(f"--hub {repo}: not logged in to the Hugging Face hub: run `huggingface-cli login` "
                           "(or set HF_TOKEN)") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = "not logged in or no write access (huggingface-cli login, or set HF_TOKEN)" if status in (401, 403) \
            else " ".join(str(e).split())[:200]
        raise RuntimeError(f"--hub {repo}: the hub refused to create the repo: {why}") from None
    except (OSError, ConnectionError) as e:  # DNS, refused, timeouts (requests/httpx errors derive from these)
        raise RuntimeError(f"--hub {repo}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                           f"({type(e).__name__}); check the network, or export without --hub and upload later "
                           "(huggingface-cli upload REPO DIR)") from None
    except Exception as e:  # noqa: BLE001 - httpx's errors are not OSErrors; the message must stay one line
        # httpx (or the vendored httpx2 of some huggingface_hub builds) raises its own transport errors
        if any(c.__module__.startswith(("httpx", "httpcore", "requests", "urllib3")) for c in type(e).__mro__):
            raise RuntimeError(f"--hub {repo}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                               f"({type(e).__name__}); check the network, or export without --hub and upload "
                               "later (huggingface-cli upload REPO DIR)") from None
        raise
    return api


def _copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name.startswith("."):
            continue  # temp files of an interrupted writer
        if f.is_dir():
            _copy_tree(f, dst / f.name)
        else:
            shutil.copy2(f, dst / f.name)


def _point_adapter_at_hub_base(adapter: Path, base: str | None) -> None:
    """peft records the base model's local path in the adapter; an export names the hub id where there is one
    (the embedded model's included), so the adapter loads elsewhere. peft's placeholder card is dropped: the
    export's README covers the adapter."""
    from .card import hub_base_model

    (adapter / "README.md").unlink(missing_ok=True)
    hub_id = hub_base_model(base)
    cfg_path = adapter / "adapter_config.json"
    if hub_id:
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = hub_id
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def convert_gguf(converter: list[str], model: Path, out: Path, outtype: str) -> Path:
    """Run llama.cpp's converter on an HF model folder; RuntimeError with its last error line on failure."""
    cmd = [*converter, str(model), "--outfile", str(out), "--outtype", outtype]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file():
        last = next((ln for ln in reversed((r.stderr or r.stdout or "").splitlines()) if ln.strip()), "no output")
        raise RuntimeError(f"--gguf: llama.cpp's converter failed (exit {r.returncode}): {last.strip()[:300]}")
    return out


def export(run: Path, to: str, hub: str | None = None, gguf: str | None = None, report=silent) -> Path:
    """Export finished run folder ``run`` to ``to``; returns the folder written. See the module doc."""
    ms = _merged(run)
    out = _target(to)
    if gguf is not None and gguf not in GGUF_TYPES:
        raise ValueError(f"--gguf {gguf}: expected one of {' | '.join(GGUF_TYPES)}")
    converter = find_converter() if gguf is not None else None
    if gguf is not None and converter is None:
        raise RuntimeError(f"--gguf: {GGUF_HINT}")
    api = hub_api(hub) if hub else None  # before copying gigabytes: fail fast when the hub cannot take it
    tmp = out.with_name(f".{out.name}.export-tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        report(f"export: copying the merged model and the persona adapter of {run.name}")
        _copy_tree(output_path(run, "final_model"), tmp)
        _copy_tree(output_path(run, "persona_adapter"), tmp / "persona-adapter")
        _point_adapter_at_hub_base(tmp / "persona-adapter", ms["merge"].get("base"))
        gguf_name = None
        if gguf is not None:
            gguf_name = f"{run.name}.{gguf}.gguf"
            report(f"export: converting to GGUF ({gguf}) with {' '.join(converter)}")
            convert_gguf(converter, tmp, tmp / gguf_name, gguf)
        from .card import constitution_yaml

        const = constitution_yaml(run, ms)
        if const:
            (tmp / "constitution.yaml").write_text(const[1])
        (tmp / "charter_run.json").write_text(run_record(ms))
        (tmp / "README.md").write_text(render(run, ms, repo=hub, local=out, gguf=gguf_name))
        if api is not None:
            report(f"export: pushing to https://huggingface.co/{hub}")
            try:  # one commit: the repo gets the whole folder or nothing
                api.upload_folder(repo_id=hub, folder_path=str(tmp), repo_type="model",
                                  commit_message=f"charter export of run {run.name}")
            except Exception as e:  # noqa: BLE001 - any upload failure is one line, and nothing is kept
                raise RuntimeError(f"--hub {hub}: upload failed ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}); nothing was written") from None
        if out.exists():
            out.rmdir()  # an empty folder the user made; checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
