"""Coalesced table writes (the agents' write-back buffer), on a plain dict."""

from peakroute.agents.common import BatchWrites


class FakeEvent:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class RecordingTable(dict):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, k, v) -> None:
        self.writes += 1
        super().__setitem__(k, v)

    def __delitem__(self, k) -> None:
        self.writes += 1
        super().__delitem__(k)


def test_reads_see_batch_writes_and_each_key_is_written_once() -> None:
    table = RecordingTable()
    table["a"] = 1
    table.writes = 0
    w = BatchWrites(table)
    w.event = FakeEvent(0)
    for i in range(10):
        w["b"] = i
    w["a"] = 5
    del w["a"]
    assert w.get("b") == 9 and w.get("a") is None and "a" not in w
    assert sorted(w.values()) == [9]
    assert table == {"a": 1}, "nothing reaches the table before flush"
    assert w.flush() == 2
    assert table == {"b": 9} and table.writes == 2
