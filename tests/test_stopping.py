"""How a process ends: one function (``stopping.ending``) maps every reason to the exit code
and last line the README's "When things go wrong" documents."""

import pytest

from ddpinfer.errors import UserError
from ddpinfer.launch.process_group import agreed
from ddpinfer.launch.stopping import PeerFailed, Preempted, Reason, Stalled, ending


@pytest.mark.parametrize(
    "error, code, line",
    [
        (None, 0, ""),
        (UserError("bad key"), 2, "error: bad key"),
        (Preempted("SIGTERM"), 75, "stopped by SIGTERM; finished work is kept"),
        (Preempted("SIGUSR1"), 75, "stopped by SIGUSR1; finished work is kept"),
        (Preempted("SIGINT"), 130, "stopped by SIGINT; finished work is kept"),
        (PeerFailed("rank 1 was stopped: x", Reason.PREEMPTED), 75, "stopping because rank 1"),
        (PeerFailed("rank 1 failed: x"), 3, "stopping because rank 1 failed"),
        (PeerFailed("rank 1 stopped responding", Reason.DEAD), 3, "stopping because rank 1"),
        (PeerFailed("lost contact", Reason.LOST_STORE), 3, "stopping because lost contact"),
        (Stalled("rank 0 stalled: x"), 1, "rank 0 stalled: x; finished work is kept"),
        (KeyError("x"), 1, "unexpected error: KeyError"),
    ],
)
def test_each_reason_has_its_exit_code_and_line(error, code, line):
    end = ending(error)
    assert end.code == code and end.line.startswith(line), end
    assert end.traceback == isinstance(error, KeyError)


class TwoRanks:
    """Rank 0's view of a collective in which rank 1 reported ``report``."""

    def __init__(self, report):
        self.report = report

    def all_gather_object(self, mine):
        return [mine, self.report]


def test_a_peer_stopped_by_a_signal_before_work_is_a_stop_not_a_failure():
    with pytest.raises(PeerFailed) as stopped:
        agreed(TwoRanks(("stopped", "was stopped: stopped by SIGTERM")), lambda: None)
    assert ending(stopped.value).code == 75


def test_a_signal_inside_an_agreed_step_is_reported_as_a_stop():
    reports = []

    class Recording(TwoRanks):
        def all_gather_object(self, mine):
            reports.append(mine)
            return [mine, None]

    def step():
        raise Preempted("SIGTERM")

    with pytest.raises(Preempted):
        agreed(Recording(None), step)
    assert reports == [("stopped", "was stopped: stopped by SIGTERM")]


CHILD_OUTLIVES = """
import multiprocessing, sys, threading, time
from ddpinfer.launch.stopping import Stalled, end_process

if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=time.sleep, args=(600,), daemon=True)
    child.start()  # as a vLLM engine's process: a daemon only interpreter shutdown would end
    print(child.pid, flush=True)
    threading.Thread(target=end_process, args=(0, Stalled("rank 0 stalled: test"))).start()
    time.sleep(600)  # the main thread is stuck
"""


def test_a_process_ended_by_its_watcher_takes_its_engine_processes_with_it(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import subprocess_env, wait_for

    script = tmp_path / "stuck.py"
    script.write_text(CHILD_OUTLIVES)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "ddpinfer: rank 0: rank 0 stalled: test" in done.stderr
    child = int(done.stdout.split()[0])

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=30)
