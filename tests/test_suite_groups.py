"""The SLURM tests share one local cluster, and each vLLM test starts engines that fill the
machine: each group must run on one worker (``--dist loadgroup``, pyproject's addopts).
pytest-xdist sends a test to its group's worker by a suffix it adds to the test's node id; a
pytest that ignores that suffix (9.2, with pytest-xdist 3.8) spreads a group over the workers,
where one worker's tests stop the cluster another's are using."""

import os

import pytest

pytestmark = pytest.mark.xdist_group("suite-groups")


def test_a_grouped_test_is_scheduled_with_its_group(request):
    if not os.environ.get("PYTEST_XDIST_WORKER") or not request.config.option.loadgroup:
        pytest.skip("not on pytest-xdist workers with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite-groups"), (
        f"{request.node.nodeid}: pytest {pytest.__version__} drops pytest-xdist's group suffix, "
        "so xdist_group is ignored; install a pytest the test extra allows (pip install -e "
        "'.[test]')"
    )
