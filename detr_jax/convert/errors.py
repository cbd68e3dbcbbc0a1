"""Errors raised while reading or converting checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message names the
    file and the first offending keys or shapes."""


def first(items, count: int = 5) -> str:
    """Comma-separated first ``count`` items, with how many more there are."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:count])
    return shown + (f" (and {len(items) - count} more)" if len(items) > count else "")
