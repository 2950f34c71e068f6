"""Progress on stderr: tqdm bars that the runner switches on for the run it is training (off with
``--quiet``, in sweep workers and in library use).  Long stretches inside a run that are not
rounds (an attack's reference models) open their own bar with :func:`bar`."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

#: whether :func:`bar` shows anything (set by :func:`shown`)
_shown = False


class Progress:
    """A tqdm bar on stderr, or nothing when quiet."""

    def __init__(self, total: int, desc: str, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in values.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def shown(on: bool) -> Iterator[None]:
    """Show the bars that :func:`bar` opens while inside (the runner: ``not quiet``)."""
    global _shown
    old, _shown = _shown, on
    try:
        yield
    finally:
        _shown = old


def bar(total: int, desc: str) -> Progress:
    """A bar of ``total`` steps, shown only inside ``shown(True)``."""
    return Progress(total, desc, quiet=not _shown)
