"""A short seeded fault campaign (the long one: benchmarks/bench_faults.py): a fault at a
random moment, re-runs until exit 0, the output equal to a fresh run's, no hang, the stopped
attempt's exit code the documented one."""

import pytest
from fault_campaign import KINDS, prepare, run_trial

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("seed", "kind"), [(0, "freeze"), (1, "two-kills"), (2, "damage")])
def test_a_random_fault_then_reruns_give_a_fresh_runs_output(tmp_path, bert_embedder, seed, kind):
    reference = prepare(tmp_path, bert_embedder, rows=24)
    assert kind in KINDS
    trial = run_trial(tmp_path, bert_embedder, kind, seed, reference)
    assert trial.exact and not trial.hang and not trial.wrong_exit, trial
    assert trial.recomputed <= 0.25, trial  # at most the batches in flight, one per rank
