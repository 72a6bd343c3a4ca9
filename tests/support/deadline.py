"""``deadline(seconds)``: fail a test instead of letting a hanging reader block the suite."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def deadline(seconds: int = 10) -> Iterator[None]:
    """Fail (instead of hanging forever) if the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise AssertionError(f"a reader ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
