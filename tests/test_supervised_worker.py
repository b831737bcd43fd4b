"""A worker under ``ward up``'s supervision, with small real processes standing in for ``ward worker``:
restarted on its port after a kill -9, given up on (one clear line) when it dies after every start,
killed and counted as a crash when a restart never gets ready. The full stack is in test_e2e_up.py."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from e2e_support import clean_env

from ward.restart_policy import RestartPolicy
from ward.supervised_worker import SupervisedWorker, WorkerState
from ward.supervisor import Supervisor

READY = "WARD_WORKER_READY"
# argv: port, then what this run does: "serve" (ready, then runs), "die" (ready, then exit 3 at
# once), "hang" (never ready). Each run says its pid and the port it was given.
STAND_IN = f"""
import os, sys, time
port, mode = sys.argv[1], sys.argv[2]
print(f"run pid={{os.getpid()}} port={{port}}", flush=True)
if mode != "hang":
    print(f"{READY} port={{port}} model=m task=generate", flush=True)
if mode == "die":
    time.sleep(0.05)
    sys.exit(3)
time.sleep(600)
"""
FAST = RestartPolicy(initial_delay_s=0.1, max_delay_s=0.2, max_crashes=3, window_s=60.0)


class Harness:
    """A Supervisor, one stand-in worker under supervision, and the lines it reported."""

    def __init__(self, tmp_path, first_mode: str, restart_mode: str, policy=FAST, startup_timeout_s=30.0) -> None:
        self.supervisor = Supervisor(tmp_path / "logs")
        self.lines: list[str] = []
        self.port = 4321  # only passed along: the stand-in binds nothing
        child = self.supervisor.start("worker-generate", self._argv(first_mode, self.port), clean_env())
        assert self.supervisor.wait_for_line(child, READY, 30.0)
        self.worker = SupervisedWorker(
            self.supervisor, child, port=self.port, model="m",
            argv_for_port=lambda port: self._argv(restart_mode, port), env=clean_env(), policy=policy,
            ready_prefix=READY, startup_timeout_s=startup_timeout_s, report=self.lines.append,
        )

    @staticmethod
    def _argv(mode: str, port: int) -> list[str]:
        return [sys.executable, "-c", STAND_IN, str(port), mode]

    def run_until(self, predicate, timeout_s: float = 30.0) -> float:
        """Calls check() as ward up's loop does until ``predicate()``; returns the seconds it took."""
        start = time.monotonic()
        while not predicate():
            assert time.monotonic() - start < timeout_s, f"not reached; reported: {self.lines}"
            self.worker.check()
            time.sleep(0.02)
        return time.monotonic() - start

    def close(self) -> None:
        self.supervisor.stop_all([[self.worker.child]], timeout_s=5)


@pytest.fixture
def harness_factory(tmp_path):
    made: list[Harness] = []

    def make(*args, **kwargs) -> Harness:
        made.append(Harness(tmp_path, *args, **kwargs))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


def test_a_worker_killed_with_sigkill_is_restarted_on_the_same_port_and_reported(harness_factory):
    h = harness_factory("serve", "serve")
    first = h.worker.child.process.pid
    os.kill(first, signal.SIGKILL)
    h.run_until(lambda: h.worker.state is WorkerState.RUNNING and h.worker.child.process.pid != first)
    assert h.worker.restarts == 1 and h.worker.child.process.poll() is None
    crash, back = h.lines
    assert crash.startswith("ward up: worker-generate exited (killed by SIGKILL) after ")
    assert "restart 1 in 0.1 s (crash 1 of 3 allowed in 60 s; log: " in crash
    assert str(h.worker.child.log_path) in crash
    assert back.startswith("ward up: worker-generate is serving again on port 4321 (restart 1, ready ")
    # One log for both runs: the first run's output, the restart's note, the second run's output.
    log = h.worker.child.log_path.read_text().splitlines()
    runs = [line for line in log if line.startswith("run pid=")]
    assert runs == [f"run pid={first} port=4321", f"run pid={h.worker.child.process.pid} port=4321"]
    note = next(i for i, line in enumerate(log) if line.startswith("--- ward up: restart 1 at "))
    assert log.index(runs[0]) < note < log.index(runs[1]) and "after: killed by SIGKILL" in log[note]


def test_a_worker_that_dies_after_every_start_is_given_up_after_the_limit_with_one_clear_line(harness_factory):
    h = harness_factory("die", "die")
    took = h.run_until(lambda: h.worker.gave_up)
    assert took < 20  # backoff 0.1 s, 0.2 s: no hang
    assert h.worker.restarts == 2 and h.worker.child.process.poll() == 3
    restarts = [line for line in h.lines if " exited (exit status 3" in line]
    assert [line.split("; restart ")[1].split(" (")[0] for line in restarts] == ["1 in 0.1 s", "2 in 0.2 s"]
    final = h.lines[-1]
    assert final == (f"ward up: giving up on worker-generate (model m) after 3 crashes in 60 s; last exit: "
                     f"exit status 3; log: {h.worker.child.log_path}")
    for _ in range(5):  # given up means left alone: no further starts
        h.worker.check()
        time.sleep(0.05)
    assert h.worker.restarts == 2 and h.worker.gave_up


def test_a_restart_that_never_gets_ready_is_killed_and_counts_as_a_crash(harness_factory):
    policy = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.05, max_crashes=2, window_s=60.0)
    h = harness_factory("serve", "hang", policy=policy, startup_timeout_s=1.0)
    os.kill(h.worker.child.process.pid, signal.SIGKILL)
    h.run_until(lambda: h.worker.gave_up)
    hung = h.worker.child.process
    assert hung.returncode == -signal.SIGKILL  # killed by the supervisor after the timeout
    assert h.lines[-1].startswith("ward up: giving up on worker-generate (model m) after 2 crashes in 60 s; "
                                  "last exit: not ready after 1 s, killed; log: ")
