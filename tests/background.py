"""Commands started in the background and awaited later by a test, so that several single-threaded subprocesses of
a module run at once on the machine's cores (tests/test_cli.py, tests/test_bench.py, tests/test_synthetic.py)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import ROOT


class BackgroundRun:
    """``argv`` started at once with one torch thread, in ``ROOT``, its stdout and stderr written to files in
    ``folder`` (a pipe could fill while another run is awaited). ``env``: variables set over the current ones, after
    removing those named in ``unset``."""

    def __init__(self, argv: list[str], folder: Path, env: dict[str, str] | None = None,
                 unset: tuple[str, ...] = ()) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err,
                                         env={**{k: v for k, v in os.environ.items() if k not in unset},
                                              "OMP_NUM_THREADS": "1", **(env or {})})

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """The finished run: its exit code, stdout and stderr."""
        code = self.proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, code, self.stdout_path.read_text(),
                                           self.stderr_path.read_text())

    def stop(self) -> None:
        """Kill the run if it is still going (a fixture's teardown after a failed test)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
