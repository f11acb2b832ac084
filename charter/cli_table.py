"""One CLI command: its name, its help line, how it adds its arguments and what it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: Callable[[argparse.ArgumentParser], None]  # adds the command's arguments to its subparser
    run: Callable[[argparse.Namespace], int]  # runs it; returns the exit code
