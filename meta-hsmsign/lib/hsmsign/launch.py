"""The ``hsmsign`` command as a process: what runs before the CLI is imported, and how it exits.

``hsmsign.cli.main(argv)`` is the command; this module is the console script around it
(``python -m hsmsign``, the pip entry point and the wrapper hsmsign-native installs):

* before the CLI and its libraries are imported (python-pkcs11, asn1crypto and cryptography
  take half of a cold run), a command with work that needs none of them begins it: ``pe
  sign`` opens its image in a thread and reads its headers, and once what that needs is
  imported, makes its output's temporary file and begins copying and hashing the body
  (``hsmsign.commands.pe_input``). SIGINT and SIGTERM remove that file from then on, as they
  do once the CLI runs, and so does the command's end if the command did not take it (a
  usage error);
* python-pkcs11's helper modules (``pkcs11.util``), which python-pkcs11 0.8 and later import
  with ``pkcs11`` and which import asn1crypto, are loaded when first used
  (:func:`defer_pkcs11_helpers`);
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

TYPE_CHECKING = False  # typing's own, without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


def console_main() -> None:
    argv = sys.argv[1:]
    defer_pkcs11_helpers()
    from .commands import pe_input

    if pe_input.prefetch(argv):
        pe_input.load()  # what its threads run, imported here while the first read is under way
        from .atomic import install_signal_handlers

        # SIGINT and SIGTERM remove temporary files from now on, as they do once the CLI runs
        install_signal_handlers()
        pe_input.open_output()
    try:
        from .cli import main

        code = main(argv)
    finally:
        pe_input.abandon()  # an output made early that the command did not take is removed
    quick_exit(code)


def defer_pkcs11_helpers() -> None:
    """In this process, python-pkcs11's ``pkcs11.util`` modules run when first used.

    ``import pkcs11`` (python-pkcs11 0.8 and later) imports ``pkcs11.util.dh``, ``dsa``, ``ec``,
    ``rsa`` and ``x509``, helpers that convert keys and signatures with asn1crypto. hsmsign
    needs one of them, to make an EC key; with them and asn1crypto imported, ``pkcs11`` took
    half of a cold ``hsmsign pe sign``, which uses none of them. A finder first in
    ``sys.meta_path``, for ``pkcs11.util.*`` only, gives their modules the standard library's
    ``LazyLoader``: the import binds the module, and its code runs at its first attribute
    lookup. Only the console script calls this, so a program that imports hsmsign as a
    library keeps its imports as they are; hsmsign's commands look such a helper up from one
    thread (``LazyLoader`` serialises the first lookup only from Python 3.12 on).
    """
    if "pkcs11" in sys.modules or any(isinstance(f, _LazyPkcs11Helpers) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _LazyPkcs11Helpers())


class _LazyPkcs11Helpers:
    """The ``sys.meta_path`` finder of :func:`defer_pkcs11_helpers`."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not name.startswith("pkcs11.util."):
            return None
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        try:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        except TypeError:  # a loader without exec_module: loaded now, as usual
            pass
        return spec


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
