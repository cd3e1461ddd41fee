"""Error types for problems the user can fix (bad names, bad checkpoints, bad configs).

The CLI prints these as one line without a traceback; anything else is a bug and keeps its
traceback. They live in ``models`` (the lowest layer) so both packages can raise them.
"""


class BenchError(Exception):
    """Base of every user-facing error: the message says what, where and what was expected."""


class ConfigError(BenchError, ValueError):
    """An unknown name or an invalid value in a model / run configuration."""


class CheckpointError(BenchError, ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def choose(kind: str, name: str, valid) -> str:
    """Return name if valid, else raise a one-line ``ConfigError`` listing the valid choices."""
    if name not in valid:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
    return name
