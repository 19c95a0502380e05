"""Run Debian's swupdate binary in tests without instances disturbing each other.

swupdate binds the abstract Unix socket ``@NotifyServer`` and ``$TMPDIR/sockinstctrl``
and ``$TMPDIR/swupdateprog``: two instances at once on one machine (two test sessions,
a developer and CI) collide and both exit 1, even after printing "SWUPDATE successful".
Each run gets a private TMPDIR and, where the kernel allows it (root, or user
namespaces), its own network namespace, which scopes abstract sockets; otherwise runs
are serialised with a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import require


def swupdate_path() -> str:
    path = shutil.which("swupdate")
    require(
        bool(path),
        "swupdate",
        "apt-get install swupdate (scripts/deps/swupdate.apt)",
        "HSMSIGN_REQUIRE_TOOLS",
    )
    assert path
    return path


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if not unshare:
        return ()
    for prefix in ((unshare, "-n"), (unshare, "-r", "-n")):
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    return ()


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    if _netns_prefix():
        yield
        return
    lock = Path(tempfile.gettempdir()) / "hsmsign-tests-swupdate.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_swupdate(args: list[str], workdir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run swupdate and return when *it* exits, with its exit code and output.

    swupdate forks helpers that share its notify socket. Now and then one outlives an
    ``-c`` run, blocked for ever on that socket (nobody reads it any more) and holding
    stdout and stderr: waiting for their end, as ``subprocess.run`` does, hung the test
    until its timeout. So the output goes to files, the wait is for swupdate's own exit,
    and what is left of its process group is killed then.
    """
    private = Path(tempfile.mkdtemp(prefix="swu-", dir=workdir))
    env = dict(os.environ)
    env["TMPDIR"] = str(private)
    argv = [*_netns_prefix(), swupdate_path(), *args]  # unshare execs swupdate: one pid, one group
    with _exclusive(), tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, env=env, cwd=workdir,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read(), err.read())
