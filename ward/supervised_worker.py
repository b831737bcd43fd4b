"""One worker under ``ward up``: started again on the same port when it exits, until it crash-loops.

``check()`` is called from ``ward up``'s loop a few times a second and never blocks: it notices an
exit, waits out the backoff, starts the worker again with its log continued, and notices it ready
(its ``WARD_WORKER_READY`` line). A restart that exits or is not ready within the start-up timeout
counts as another crash. Every step is reported in one line (worker, exit status or signal, restart
number, next delay); after the crash-loop limit the worker is left down with one line naming it, its
last exit and its log.

The port stays the same, so the gateway's configured worker addresses stay valid: the gateway sees
the worker unreachable, answers its model's requests 503 with Retry-After, and takes it back into
rotation at its first good poll.
"""
from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping, Sequence

from ward.restart_policy import CrashHistory, RestartPolicy
from ward.supervisor import Child, Supervisor, describe_exit


class WorkerState(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting to restart"
    STARTING = "restarting"
    GAVE_UP = "given up"


class SupervisedWorker:
    """A worker process kept running by restarts; see the module docstring."""

    def __init__(
        self,
        supervisor: Supervisor,
        child: Child,
        *,
        port: int,
        model: str,
        argv_for_port: Callable[[int], Sequence[str]],
        env: Mapping[str, str] | None,
        policy: RestartPolicy,
        ready_prefix: str,
        startup_timeout_s: float,
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``child`` is the worker's first run, already ready on ``port``; ``argv_for_port(port)`` is
        the command that starts it again there."""
        self.supervisor = supervisor
        self.child = child
        self.port = port
        self.model = model
        self.restarts = 0  # restarts begun
        self.state = WorkerState.RUNNING
        self.last_exit = ""
        self._argv_for_port = argv_for_port
        self._env = env
        self._crashes = CrashHistory(policy)
        self._ready_prefix = ready_prefix
        self._startup_timeout_s = startup_timeout_s
        self._report = report
        self._clock = clock
        self._ready_at = clock()
        self._started_at = self._ready_at
        self._restart_at = 0.0

    @property
    def name(self) -> str:
        return self.child.name

    @property
    def gave_up(self) -> bool:
        return self.state is WorkerState.GAVE_UP

    def check(self) -> None:
        """Advances the worker's state by what happened since the last call."""
        now = self._clock()
        if self.state is WorkerState.RUNNING:
            if self.child.exited():
                self._crashed(now, describe_exit(self.child.process.returncode), up_for_s=now - self._ready_at)
        elif self.state is WorkerState.WAITING:
            if now >= self._restart_at:
                self._start(now)
        elif self.state is WorkerState.STARTING:
            self._check_starting(now)

    # -- transitions -------------------------------------------------------------------------------

    def _check_starting(self, now: float) -> None:
        if self.child.find_line(self._ready_prefix) is not None:
            self.state, self._ready_at = WorkerState.RUNNING, now
            self._report(f"ward up: {self.name} is serving again on port {self.port} "
                         f"(restart {self.restarts}, ready {now - self._started_at:.1f} s after its start)")
        elif self.child.exited():
            self._crashed(now, f"{describe_exit(self.child.process.returncode)} before it was ready", up_for_s=0.0)
        elif now - self._started_at > self._startup_timeout_s:
            self.child.process.kill()
            self.child.process.wait()
            self._crashed(now, f"not ready after {self._startup_timeout_s:.0f} s, killed", up_for_s=0.0)

    def _crashed(self, now: float, how: str, *, up_for_s: float) -> None:
        self.last_exit = how
        decision = self._crashes.record(now, up_for_s)
        window = f"{self._crashes.policy.window_s:.0f} s"
        if decision.give_up:
            self.state = WorkerState.GAVE_UP
            crashes = f"{decision.crashes_in_window} crash" + ("es" if decision.crashes_in_window > 1 else "")
            self._report(
                f"ward up: giving up on {self.name} (model {self.model}) after {crashes} in {window}; "
                f"last exit: {how}; log: {self.child.log_path}"
            )
            return
        self.state = WorkerState.WAITING
        self._restart_at = now + decision.delay_s
        ran = f" after {up_for_s:.1f} s up" if up_for_s else ""
        self._report(
            f"ward up: {self.name} exited ({how}){ran}; restart {self.restarts + 1} in {decision.delay_s:.1f} s "
            f"(crash {decision.crashes_in_window} of {self._crashes.policy.max_crashes} allowed in {window}; "
            f"log: {self.child.log_path})"
        )

    def _start(self, now: float) -> None:
        self.restarts += 1
        self._started_at = now
        note = (f"--- ward up: restart {self.restarts} at {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                f"after: {self.last_exit} ---")
        try:
            self.child = self.supervisor.start(
                self.name, self._argv_for_port(self.port), self._env, continue_log=note
            )
        except OSError as exc:  # the command itself cannot run (e.g. the interpreter is gone)
            self._crashed(now, f"could not start: {exc}", up_for_s=0.0)
            return
        self.state = WorkerState.STARTING
