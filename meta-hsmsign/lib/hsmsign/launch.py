"""The ``hsmsign`` command as a process: what runs before the CLI is imported, and how it exits.

``hsmsign.cli.main(argv)`` is the command; this module is the console script around it
(``python -m hsmsign``, the pip entry point and the wrapper hsmsign-native installs):

* before the CLI and its libraries are imported (python-pkcs11, asn1crypto and cryptography
  take half of a cold run), a command with work that needs none of them begins it: ``pe
  sign`` reads its image in a thread, and hashes it once what that needs is imported
  (``hsmsign.commands.pe_input``);
* once the command has returned, the process ends without Python's teardown of every
  module (12 - 14 ms of each cold run on the project's machine), but only when
  that is safe: standard output and error flushed, every PKCS#11 module this process
  loaded finalized (``C_Finalize``, as the module expects), no thread left that Python
  would wait for, and no ``atexit`` handler registered (``logging`` and SPSDK's progress
  bar register one). Otherwise it exits the usual way.

This module imports only ``os`` and ``sys``, which the interpreter has already loaded.
"""

from __future__ import annotations

import os
import sys


def console_main() -> None:
    argv = sys.argv[1:]
    from .commands import pe_input

    if pe_input.prefetch(argv):
        pe_input.load()  # what its threads run, imported here while the first read is under way
    from .cli import main

    quick_exit(main(argv))


def quick_exit(code: int) -> None:
    """End the process with ``code`` once nothing is left to do; see the module docstring."""
    import threading

    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    if _atexit_handlers() != 0:
        sys.exit(code)  # a library's teardown work (flushing a log file...) runs as it expects
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)  # a closed pipe: Python's own exit reports it as it always did
    modules = sys.modules.get("hsmsign.token.modules")
    if modules is not None and not modules.finalize_all():
        sys.exit(code)
    os._exit(code)


def _atexit_handlers() -> int | None:
    """How many ``atexit`` handlers are registered; None where the interpreter cannot say
    (``atexit._ncallbacks`` is CPython's), which counts as some."""
    import atexit

    count = getattr(atexit, "_ncallbacks", None)
    return count() if callable(count) else None
