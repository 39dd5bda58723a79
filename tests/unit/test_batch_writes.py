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


class Message:
    partition = 0


class Event:
    message = Message()


class CountingTable(dict):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, k, default=None):  # noqa: ANN001, ANN201
        self.reads += 1
        return super().get(k, default)


def test_a_key_found_absent_is_not_looked_up_again_in_the_same_batch_and_is_after_it() -> None:
    """A new order is read when normalized and again when routed; a miss (the dearest read: every
    partition's bloom filter) is remembered until the batch's flush, a value never is."""
    table = CountingTable()
    table["old"] = {"n": 1}
    w = BatchWrites(table)
    w.event = Event()
    assert w.get("new") is None and w.get("new", "d") == "d" and "new" not in w
    assert table.reads == 1, "the miss was remembered"
    assert w.get("old") == {"n": 1} and w.get("old") == {"n": 1}
    assert table.reads == 3, "values are read from the table each time, never kept and shared"
    w["new"] = {"n": 2}
    assert w.get("new") == {"n": 2}, "the batch's own write wins over the remembered miss"
    w.flush()
    table.reads = 0
    del table["new"]
    assert w.get("new") is None and table.reads == 1, "a new batch looks again"


def test_a_read_asks_the_store_for_the_events_own_partition_only() -> None:
    """An agent's state for a key lives on the partition of the events that own the key (flush
    writes it there), so the read is ``exact``: a miss there is not searched for elsewhere."""
    from peakroute.tables.packed import PackedTable

    asked: list[tuple] = []

    class Spy(PackedTable):
        def get(self, key, default=None, partition=None, exact=False):  # noqa: ANN001, ANN201
            asked.append((key, partition, exact))
            return default

    class Message3:
        partition = 3

    class Event3:
        message = Message3()

    w = BatchWrites(Spy({}))
    assert w.get("o-1") is None, "no event named: the store searches (hint None, not exact)"
    w.event = Event3()  # type: ignore[assignment]
    assert w.get("o-2") is None
    assert asked == [("o-1", None, False), ("o-2", 3, True)]


def test_a_miss_on_one_partition_is_no_answer_for_another() -> None:
    """A payload read off its order's partition looks the order up there (and misses: its state
    lives at home) before it is forwarded; the forwarded copy, in the same batch, must still find
    the order on its home partition — or it is emitted twice (seen in CI)."""
    from peakroute.tables.packed import PackedTable

    class PerPartition(PackedTable):
        def get(self, key, default=None, partition=None, exact=False):  # noqa: ANN001, ANN201
            return {"home": 1} if (key, partition) == ("o-1", 0) else default

    def on(partition: int) -> object:
        class M:
            pass

        class E:
            message = M()

        E.message.partition = partition  # type: ignore[attr-defined]
        return E()

    w = BatchWrites(PerPartition({}))
    w.event = on(1)  # type: ignore[assignment]
    assert w.get("o-1") is None, "not on the partition it was read off"
    w.event = on(0)  # type: ignore[assignment]
    assert w.get("o-1") == {"home": 1}, "the miss on partition 1 is not remembered for partition 0"
    w.event = on(1)  # type: ignore[assignment]
    assert w.get("o-1") is None
