"""finsent.heap: what a service holds after start-up is kept out of later garbage collections."""

import gc

from finsent.heap import fewer_young_collections, freeze_startup_objects


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


def test_fewer_young_collections_raises_the_first_threshold_and_restores_all_three_even_on_error():
    before = gc.get_threshold()
    gc.set_threshold(700, 7, 9)
    try:
        try:
            with fewer_young_collections(5_000):
                assert gc.get_threshold() == (5_000, 7, 9)
                raise RuntimeError("the job failed part-way")
        except RuntimeError:
            pass
        assert gc.get_threshold() == (700, 7, 9)
        gc.set_threshold(50_000, 7, 9)
        with fewer_young_collections(5_000):
            assert gc.get_threshold() == (50_000, 7, 9)  # never lowered
        assert gc.get_threshold() == (50_000, 7, 9)
    finally:
        gc.set_threshold(*before)


def test_fewer_young_collections_leaves_automatic_collection_off_when_it_was_off():
    before = gc.get_threshold()
    gc.set_threshold(0, 7, 9)
    try:
        with fewer_young_collections(5_000):
            assert gc.get_threshold() == (0, 7, 9)
        assert gc.get_threshold() == (0, 7, 9)
    finally:
        gc.set_threshold(*before)
