"""Progress bars on stderr, shown only on a terminal: piped output stays exactly what the command prints."""

from __future__ import annotations

import shutil
import sys
from typing import Any


class Progress:
    """A tqdm bar on stderr when it is a terminal (or ``enabled=True``); otherwise does nothing."""

    def __init__(self, total: int | None, desc: str, unit: str = "job", enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        if self.enabled:
            from tqdm import tqdm

            # A terminal that does not tell its size (a bare pty) says 0 x 0: tqdm would hide the bar.
            size = shutil.get_terminal_size((0, 0))
            known = bool(size.columns and size.lines)
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=known,
                             ncols=None if known else 100, nrows=None if known else 24, smoothing=0.1)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set(self, done: int, total: int | None = None, **postfix: Any) -> None:
        """Move the bar to ``done`` (of ``total``, when it became known), with ``postfix`` figures."""
        if self._bar is None:
            return
        if total is not None and total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
