"""Progress bars: tqdm on stderr, on rank 0 only, off when asked (``enabled=False``)."""

from __future__ import annotations

import sys


def bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "step"):
    """A tqdm bar for ``total`` steps starting at ``initial`` (a resumed run), or a no-op
    stand-in with the same ``update`` / ``set_postfix_str`` / ``close`` when disabled. When
    stderr is not a terminal the bar refreshes rarely (about every 30 s) so logs stay short."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress bars need the tqdm package: pip install tqdm "
                          "(or turn them off: --quiet / progress=False)") from None
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                dynamic_ncols=True, leave=True, mininterval=0.1 if tty else 30.0,
                maxinterval=60.0 if tty else 600.0, smoothing=0.1)


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass
