"""A toy evaluation from outside charter: this module is the whole evaluation with its report and card
presenters, and its last line the one registry entry (``CHARTER_PLUGINS=tests.plugins.toy_eval``)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from charter import registry
from charter.config import ConfigError
from charter.runs import Stage, read_json, run_dir, silent, write_json_atomic


@dataclass
class ToyEvalConfig:
    word: str = field(default="toy-result", metadata={"help": "what the toy evaluation writes (not empty)"})


def run(cfg, force: bool = False, report=silent) -> Path:
    stage = Stage(run_dir(cfg.name), registry.eval_folder("toyeval"), {"word": cfg.toyeval.word})
    if stage.begin(force):
        write_json_atomic(stage.dir / "results.json", {"word": cfg.toyeval.word})
        stage.finish({"words": 1})
        report("toyeval: done")
    return stage.dir


def preflight(cfg, where: str) -> list:
    if not cfg.toyeval.word:
        raise ConfigError(f"{where}.toyeval.word: expected a word, got ''")
    return []


def section(folder: Path) -> str | None:
    p = folder / "results.json"
    return f"<p>toy says {html.escape(read_json(p)['word'])}</p>" if p.exists() else None


def card(folder: Path) -> list[str]:
    return [f"The toy evaluation says {read_json(folder / 'results.json')['word']}."]


registry.register(registry.Evaluation("toyeval", "a toy evaluation from a plugin", run, ToyEvalConfig,
                                      "plugin: the toy evaluation", report=(registry.Section("toyeval", "Toy", section),),
                                      card=card, preflight=preflight))
