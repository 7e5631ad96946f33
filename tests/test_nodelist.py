import pytest

from ddpinfer.launch.nodelist import expand_nodelist, expand_tasks_per_node, first_host


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[01-04,07],cpu3", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("x-1,y[009-010]", ["x-1", "y009", "y010"]),
    ],
)
def test_expand(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


def test_bad_nodelists():
    with pytest.raises(ValueError, match="unbalanced"):
        expand_nodelist("gpu[01-02")
    with pytest.raises(ValueError, match="empty"):
        first_host("")


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ValueError):
        expand_tasks_per_node("two")
