"""The ``hsmsign`` process around the command (hsmsign.launch): how it ends.

After the command it ends without Python's teardown, and only when nothing is lost: every
byte of output written, the exit code kept, a thread Python would wait for waited for.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_buffered_output_is_written_and_the_code_kept(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        from hsmsign.launch import quick_exit
        sys.stdout.write("x" * 1_000_000)  # no newline: still in the buffer
        sys.stderr.write("last words")
        quick_exit(7)
        """,
        tmp_path,
    )
    assert done.returncode == 7
    assert done.stdout == b"x" * 1_000_000
    assert done.stderr == b"last words"


def test_a_thread_python_waits_for_is_waited_for(tmp_path: Path) -> None:
    done = _python(
        """
        import threading, time
        from pathlib import Path
        from hsmsign.launch import quick_exit

        def late():
            time.sleep(0.3)
            Path("written-late").write_text("done")

        threading.Thread(target=late).start()
        quick_exit(3)
        """,
        tmp_path,
    )
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "written-late").read_text() == "done"


def test_an_atexit_handler_still_runs(tmp_path: Path) -> None:
    done = _python(
        """
        import atexit
        from pathlib import Path
        from hsmsign.launch import quick_exit

        atexit.register(lambda: Path("at-exit").write_text("ran"))
        quick_exit(5)
        """,
        tmp_path,
    )
    assert done.returncode == 5, done.stderr
    assert (tmp_path / "at-exit").read_text() == "ran"


def test_the_command_line_keeps_its_exit_codes_and_messages(tmp_path: Path) -> None:
    def hsmsign(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hsmsign", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    missing = hsmsign("pe", "digest", "missing.efi")
    assert missing.returncode == 2
    assert missing.stderr.startswith("hsmsign: error: ") and "missing.efi" in missing.stderr
    (tmp_path / "not-pe.efi").write_bytes(b"MZ" + bytes(100))
    not_pe = hsmsign("pe", "digest", "--json", "not-pe.efi")
    assert not_pe.returncode == 2 and "not a PE/COFF image" in not_pe.stderr
    usage = hsmsign("pe", "digest")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    version = hsmsign("--version")
    assert version.returncode == 0 and version.stdout.startswith("hsmsign ")
