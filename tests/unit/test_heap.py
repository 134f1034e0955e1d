"""finsent.heap: what a service holds after start-up is kept out of later garbage collections."""

import gc

from finsent.heap import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_startup_objects_are_frozen_garbage_first_and_later_objects_are_still_collected():
    gc.unfreeze()
    try:
        kept = [Node() for _ in range(100)]
        Node()  # garbage before the freeze: collected, not frozen
        tracked_before = len(gc.get_objects())
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert frozen <= tracked_before  # the garbage cycle was collected first
        assert not any(isinstance(o, Node) for o in gc.get_objects())  # frozen objects are skipped by the collector
        later = Node()
        assert any(o is later for o in gc.get_objects())  # objects made afterwards are tracked as usual
        del later
        assert gc.collect() >= 1  # ... and their cycles freed
    finally:
        gc.unfreeze()
