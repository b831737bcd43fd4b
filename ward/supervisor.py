"""Child processes of ``ward up``: started with their output in log files, watched, stopped in order.

Children run in their own session, so a Ctrl-C in the terminal reaches only ``ward up``, which then
stops them in a deliberate order (gateway first, so no request is routed to a stopping worker). On
Linux each child also gets SIGTERM if ``ward up`` itself dies, so none is left orphaned.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child exited, or did not become ready in time; the message quotes the end of its log."""


def describe_exit(returncode: int) -> str:
    """``exit status 1`` or ``killed by SIGKILL`` for a Popen return code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: pathlib.Path
    log_start: int = 0  # where this run's output begins in the log (a restart appends to it)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def find_line(self, prefix: str) -> str | None:
        """The first line of this run's output starting with ``prefix``, if it was written yet."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_start)
                for raw in log:
                    line = raw.decode(errors="replace")
                    if line.startswith(prefix) and line.endswith("\n"):
                        return line.strip()
        except OSError:
            pass
        return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ChildFailed:
        return ChildFailed(f"{self.name} {what} (log: {self.log_path}):\n{self.log_tail()}")


def _terminate_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when its parent dies (Linux), or exits if it already did."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


class Supervisor:
    """Starts children, waits for them to be ready, notices when one exits, stops them all."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *, continue_log: str | None = None
    ) -> Child:
        """Starts ``argv`` with stdout and stderr written to ``<log_dir>/<name>.log``.

        The log starts afresh, unless ``continue_log`` is given (a restart): then that line is
        appended and the new run's output follows it, so the log keeps why the last run ended.
        A child of the same name that has exited is forgotten.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "a" if continue_log is not None else "w") as log:
            if continue_log is not None:
                log.write(continue_log.rstrip("\n") + "\n")
                log.flush()
            log_start = log.tell()
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_terminate_with_parent(os.getpid()),
            )
        child = Child(name, process, log_path, log_start)
        self.children = [c for c in self.children if not (c.name == name and c.exited())] + [child]
        return child

    @staticmethod
    def wait_for_line(
        child: Child, prefix: str, timeout_s: float, stop: Callable[[], bool] = lambda: False
    ) -> str | None:
        """The first line of the child's log starting with ``prefix``.

        Returns None when ``stop()`` turns true first; raises ChildFailed when the child exits or
        the timeout passes.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop():
            line = child.find_line(prefix)
            if line is not None:
                return line
            if child.exited():
                line = child.find_line(prefix)  # written just before it exited
                if line is not None:
                    return line
                raise child.failure(f"exited ({describe_exit(child.process.returncode)}) before it was ready")
            time.sleep(0.1)
        if stop():
            return None
        raise child.failure(f"was not ready after {timeout_s:.0f} s")

    def stop_all(self, order: Sequence[Sequence[Child]], timeout_s: float = 30.0) -> None:
        """SIGTERM to each group in ``order`` in turn (waiting for the group to exit), then to any
        child not named; a child still running after ``timeout_s`` gets SIGKILL."""
        named = {id(child) for group in order for child in group}
        groups = [list(group) for group in order] + [[c for c in self.children if id(c) not in named]]
        for group in groups:
            for child in group:
                if not child.exited():
                    child.process.send_signal(signal.SIGTERM)
            for child in group:
                try:
                    child.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
