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
