"""Errors shared by low-level modules (so ``config`` and ``distributed`` need not import each other)."""


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key and what was expected."""
