"""A toy training stage from outside charter: this module is the whole stage, and its last line the one
registry entry (loaded with ``CHARTER_PLUGINS=tests.plugins.toy_stage``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from charter import registry
from charter.config import ConfigError
from charter.runs import Stage, run_dir


@dataclass
class ToyStageConfig:
    level: int = field(default=3, metadata={"help": "how loud the toy stage is (>= 0)"})


def run(cfg, force: bool = False):
    stage = Stage(run_dir(cfg.name), "toy", {"toy": dataclasses.asdict(cfg.toy)})
    if stage.begin(force):
        stage.finish({"level": cfg.toy.level})
    return stage.dir


def summary(manifest: dict) -> str:
    return f"toy: level {manifest['counts']['level']}"


def preflight(cfg, where: str, runs: bool) -> list:
    if cfg.toy.level < 0:
        raise ConfigError(f"{where}.toy.level: expected a number >= 0, got {cfg.toy.level}")
    return []


def card(manifest: dict) -> str:
    return f"- toy stage: level {manifest['counts']['level']}"


registry.register(registry.Stage("toy", "a toy stage from a plugin", run, summary, ToyStageConfig,
                                 "plugin: the toy stage", preflight=preflight, card=card))
