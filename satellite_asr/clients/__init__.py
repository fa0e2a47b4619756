"""The command-line clients."""

from collections.abc import Iterator
from contextlib import contextmanager


class OutputClosed(Exception):
    """What reads a client's output went away (`| head` had its lines): nothing more is worth doing."""


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """Writes to the output inside it: a reader gone (`BrokenPipeError`) is `OutputClosed`, which the
    CLI ends quietly, not an error of the command (an OSError a bench would blame on the daemon)."""
    try:
        yield
    except BrokenPipeError:
        raise OutputClosed from None
