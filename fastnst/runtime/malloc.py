"""Keep freed memory for reuse instead of returning it to the OS (glibc, Linux).

Every forward pass of a style network allocates and frees the same large activations (a
32 x 512 x 512 float32 tensor is 32 MiB). glibc serves blocks above its mmap threshold with
fresh ``mmap`` pages and unmaps them on free (and trims the heap's top), so every pass pays a
page fault per 4 KiB it touches: on this project's CPU machines that costs about as much as
the convolutions (measured: 6 images at 1024² through ``fastnst stylize johnson``, 24.6 s with
the defaults, 16.4 s with freed memory kept; eager PyTorch gains the same).

The ``fastnst`` commands that run networks (stylize, sheet, train, upscale, evaluate) therefore start
with ``MALLOC_MMAP_MAX_=0`` (no mmap-served blocks) and ``MALLOC_TRIM_THRESHOLD_=2147483647``
(the heap is not shrunk): ``fastnst/__init__.py`` re-executes the command once with them set,
before torch is imported (glibc reads them at start-up; setting them later with ``mallopt``
did not give the same reuse here). The cost: the process keeps its peak heap until it exits.
``FASTNST_MALLOC=system`` keeps the C library's defaults; variables the user set are kept.
Python users get the same by starting their own process with these variables (``ENV``).
"""

from __future__ import annotations

import os
import sys

ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"}
MARK = "FASTNST_MALLOC_APPLIED"
COMMANDS = ("stylize", "sheet", "train", "upscale", "evaluate")


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def reexec_argv(argv: list[str], orig_argv: list[str], environ) -> list[str] | None:
    """The command line to re-execute with ``ENV`` set, or None to run as is: only for the
    commands that run networks, on glibc, once, unless ``FASTNST_MALLOC=system`` or the user
    set the variables."""
    if environ.get(MARK) or environ.get("FASTNST_MALLOC", "").lower() in ("system", "default", "off", "0"):
        return None
    if any(k in environ for k in ENV) or not sys.platform.startswith("linux") or not _glibc():
        return None
    if len(argv) < 2 or argv[1] not in COMMANDS or len(orig_argv) < 2:
        return None
    return [sys.executable, *orig_argv[1:]]


def apply_for_cli() -> None:
    """Re-execute this CLI process with ``ENV`` when ``reexec_argv`` says so (never returns
    then); a failed exec runs on with the defaults."""
    args = reexec_argv(list(sys.argv), list(getattr(sys, "orig_argv", [])), os.environ)
    if args is None:
        return
    env = dict(os.environ, **ENV, **{MARK: "1"})
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, args, env)
    except OSError:
        return


def status() -> str:
    if os.environ.get(MARK):
        return "freed memory kept for reuse (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=2147483647)"
    return "C library defaults"
