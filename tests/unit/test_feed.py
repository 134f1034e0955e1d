"""The model's in-tray (stream/feed.py), without Kafka or a model.

A batch here is a list of strings; the "model" is a coroutine that records each call and can be held on an
``asyncio.Event``, and delivery records what it delivered and can be held likewise. A fake is right for this:
the tests are about which batches go into one call, in which order outputs are delivered and when offsets are
released, not about the model (tests/e2e/test_worker.py runs the real worker through it).
"""

from __future__ import annotations

import asyncio

import pytest

from finsent.stream.feed import ModelFeed, cut_for_calls

pytestmark = pytest.mark.unit


class Steps:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.delivered: list[list[str]] = []
        self.released: list[str] = []
        self.model_free = asyncio.Event()
        self.model_free.set()
        self.broker_up = asyncio.Event()
        self.broker_up.set()
        self.errors: list[BaseException] = []

    async def infer(self, batch: list[str]) -> list[str]:
        self.calls.append(list(batch))
        await self.model_free.wait()
        return [f"scored:{x}" for x in batch]

    async def deliver(self, batch: list[str]) -> None:
        await self.broker_up.wait()
        self.delivered.append(batch)

    def feed(self, max_records: int = 8, merge=None, calls: int = 1) -> ModelFeed[list[str]]:
        merge = merge or (lambda bs: [x for b in bs for x in b])
        return ModelFeed(self.infer, self.deliver, merge, len, max_records, on_error=self.errors.append, calls=calls)

    def release(self, name: str):
        return lambda: self.released.append(name)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_lone_batch_goes_in_at_once_and_is_released_after_its_delivery():
    async def main():
        steps = Steps()
        feed = steps.feed()
        await feed.put(["a"], steps.release("A"))
        await feed.join()
        assert steps.calls == [["a"]] and steps.delivered == [["scored:a"]] and steps.released == ["A"]

    asyncio.run(main())


def test_batches_that_wait_while_the_model_is_busy_go_in_as_one_call_up_to_max_records_in_put_order():
    async def main():
        steps = Steps()
        feed = steps.feed(max_records=5)
        steps.model_free.clear()
        await feed.put(["a1", "a2"], steps.release("A"))
        await settle()  # A is in the model
        for name, batch in (("B", ["b1", "b2"]), ("C", ["c1"]), ("D", ["d1", "d2"])):
            await feed.put(batch, steps.release(name))
        late = asyncio.create_task(feed.put(["e1"], steps.release("E")))  # waits: 5 records wait already
        await settle()
        steps.model_free.set()
        await late
        await feed.join()
        # B + C + D is 5 records: one call; E would make it 6, so it goes in the next one.
        assert steps.calls == [["a1", "a2"], ["b1", "b2", "c1", "d1", "d2"], ["e1"]]
        assert [x for d in steps.delivered for x in d] == [
            f"scored:{x}" for x in ("a1", "a2", "b1", "b2", "c1", "d1", "d2", "e1")
        ]
        assert steps.released == ["A", "B", "C", "D", "E"]

    asyncio.run(main())


def test_nothing_is_released_before_its_outputs_are_acknowledged_and_deliveries_keep_put_order():
    async def main():
        steps = Steps()
        feed = steps.feed(max_records=2)
        steps.broker_up.clear()
        await feed.put(["a"], steps.release("A"))
        await feed.put(["b", "c"], steps.release("B"))
        await settle()
        assert steps.calls and not steps.delivered and steps.released == []  # classified, not acknowledged
        steps.broker_up.set()
        await feed.join()
        assert steps.released == ["A", "B"] and steps.delivered[0] == ["scored:a"]

    asyncio.run(main())


def test_put_waits_while_max_records_wait_for_the_model():
    async def main():
        steps = Steps()
        feed = steps.feed(max_records=3)
        steps.model_free.clear()
        await feed.put(["a"], steps.release("A"))
        await settle()  # A in the model
        await feed.put(["b1", "b2", "b3"], steps.release("B"))  # the in-tray is full now
        blocked = asyncio.create_task(feed.put(["c"], steps.release("C")))
        await settle()
        assert not blocked.done()
        steps.model_free.set()
        await asyncio.wait_for(blocked, 5)
        await feed.join()
        assert steps.released == ["A", "B", "C"]

    asyncio.run(main())


def test_a_cancelled_feed_releases_nothing_it_had_not_delivered():
    async def main():
        steps = Steps()
        feed = steps.feed()
        await feed.put(["a"], steps.release("A"))
        await feed.join()
        steps.broker_up.clear()
        await feed.put(["b"], steps.release("B"))  # classified, its delivery hangs (a dead broker)
        steps.model_free.clear()
        await settle()
        await feed.put(["c"], steps.release("C"))  # in the model
        await settle()
        feed.cancel()
        steps.broker_up.set()
        steps.model_free.set()
        await settle()
        assert steps.released == ["A"]  # B and C stay held: never committed, a fresh worker redelivers them

    asyncio.run(main())


def test_at_most_two_deliveries_wait_behind_the_model():
    async def main():
        steps = Steps()
        feed = steps.feed(max_records=1)
        steps.broker_up.clear()  # no delivery completes
        for name in "ABCD":
            await feed.put([name.lower()], steps.release(name))
            await settle()
        late = asyncio.create_task(feed.put(["e"], steps.release("E")))
        await settle()
        # A, B and C are classified and wait for the broker (two behind the first); D waits for the model, and
        # E for room in the in-tray: nothing piles up while the broker is away.
        assert steps.calls == [["a"], ["b"], ["c"]] and not late.done()
        steps.broker_up.set()
        await late
        await feed.join()
        assert steps.released == list("ABCDE")

    asyncio.run(main())


def test_a_later_delivery_never_overtakes_an_earlier_one():
    async def main():
        acked = {"A": asyncio.Event(), "B": asyncio.Event()}
        steps = Steps()

        async def deliver(batch: list[str]) -> None:  # each batch's acks come when the test says
            await acked[batch[0].removeprefix("scored:")].wait()
            steps.delivered.append(batch)

        steps.deliver = deliver  # type: ignore[method-assign]
        feed = steps.feed(max_records=1)
        await feed.put(["A"], steps.release("A"))
        await settle()
        await feed.put(["B"], steps.release("B"))
        await settle()
        acked["B"].set()  # B's acks first: B must still wait for A
        await settle()
        assert steps.delivered == [] and steps.released == []
        acked["A"].set()
        await feed.join()
        assert steps.released == ["A", "B"] and steps.delivered == [["scored:A"], ["scored:B"]]

    asyncio.run(main())


def test_an_unforeseen_error_inside_the_feed_is_reported_not_swallowed():
    async def main():
        steps = Steps()

        def broken_merge(batches):
            raise RuntimeError("merge bug")

        feed = steps.feed(max_records=4, merge=broken_merge)
        steps.model_free.clear()
        await feed.put(["a"], steps.release("A"))
        await settle()
        await feed.put(["b"], steps.release("B"))
        await feed.put(["c"], steps.release("C"))  # B and C will be merged
        steps.model_free.set()
        await settle()
        assert [str(e) for e in steps.errors] == ["merge bug"] and steps.released == ["A"]

    asyncio.run(main())


class HeldCalls(Steps):
    """Each model call is held until the test frees the batch it starts with (``free["a"]``), so calls can end
    in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.free: dict[str, asyncio.Event] = {}
        self.running = 0
        self.most_at_once = 0

    async def infer(self, batch: list[str]) -> list[str]:
        self.calls.append(list(batch))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await self.free.setdefault(batch[0], asyncio.Event()).wait()
        self.running -= 1
        return [f"scored:{x}" for x in batch]

    def let(self, *first: str) -> None:
        for name in first:
            self.free.setdefault(name, asyncio.Event()).set()


def test_with_two_calls_a_second_batch_goes_in_while_the_first_is_in_the_model_and_a_third_waits():
    async def main():
        steps = HeldCalls()
        feed = steps.feed(max_records=8, calls=2)
        for name in "abc":
            await feed.put([name], steps.release(name.upper()))
            await settle()
        assert steps.calls == [["a"], ["b"]] and steps.running == 2  # c waits for a free call
        steps.let("b")
        await settle()
        assert steps.calls == [["a"], ["b"], ["c"]]
        assert steps.delivered == [] and steps.released == []  # b is scored but must wait for a
        steps.let("a", "c")
        await feed.join()
        assert steps.most_at_once == 2
        assert steps.delivered == [["scored:a"], ["scored:b"], ["scored:c"]] and steps.released == ["A", "B", "C"]

    asyncio.run(main())


def test_with_one_call_batches_never_overlap_in_the_model():
    async def main():
        steps = HeldCalls()
        feed = steps.feed(max_records=1, calls=1)
        for name in "ab":
            await feed.put([name], steps.release(name.upper()))
            await settle()
        assert steps.calls == [["a"]]
        steps.let("a", "b")
        await feed.join()
        assert steps.most_at_once == 1 and steps.released == ["A", "B"]

    asyncio.run(main())


async def two_busy_calls_and_six_waiting() -> tuple[HeldCalls, ModelFeed[list[str]]]:
    """Two calls side by side, both in the model (a, b), and six records waiting behind them in four batches."""
    steps = HeldCalls()
    feed = steps.feed(max_records=8, calls=2)
    await feed.put(["a"], steps.release("A"))
    await feed.put(["b"], steps.release("B"))
    await settle()
    for name, batch in (("C", ["c1", "c2"]), ("D", ["d1"]), ("E", ["e1", "e2"]), ("F", ["f1"])):
        await feed.put(batch, steps.release(name))
    return steps, feed


def test_what_waits_is_shared_among_the_calls_in_whole_batches():
    async def main():
        steps, feed = await two_busy_calls_and_six_waiting()
        steps.let("a", "b")
        await settle()
        # Six records waited when both calls came free: half each, in whole batches (C + D is 3; of the 3 left,
        # E is 2 = ceil(3 / 2)), not all six in one call; F waits for the first call to come free.
        assert steps.calls == [["a"], ["b"], ["c1", "c2", "d1"], ["e1", "e2"]]
        steps.let("e1", "f1")
        await settle()
        assert steps.calls[-1] == ["f1"]
        steps.let("c1")
        await feed.join()
        assert steps.released == list("ABCDEF")
        assert [x for d in steps.delivered for x in d] == [
            f"scored:{x}" for x in ("a", "b", "c1", "c2", "d1", "e1", "e2", "f1")
        ]

    asyncio.run(main())


def test_a_call_that_comes_free_while_another_is_busy_takes_only_its_share_of_what_waits():
    async def main():
        steps, feed = await two_busy_calls_and_six_waiting()
        steps.let("a")  # b stays in the model
        await settle()
        # Six wait and one call is free: it takes three (C + D); E + F are left for the next call to come free.
        assert steps.calls == [["a"], ["b"], ["c1", "c2", "d1"]]
        steps.let("b", "c1", "e1", "f1")
        await feed.join()
        assert [x for call in steps.calls[3:] for x in call] == ["e1", "e2", "f1"]
        assert steps.released == list("ABCDEF")

    asyncio.run(main())


class AloneOrSideBySide(HeldCalls):
    """HeldCalls with a second model path for a call that runs alone (``infer_alone``); ``alone`` records which
    calls took it."""

    def __init__(self) -> None:
        super().__init__()
        self.alone: list[list[str]] = []

    async def infer_alone(self, batch: list[str]) -> list[str]:
        self.alone.append(list(batch))
        return await self.infer(batch)

    def feed(self, max_records: int = 8, merge=None, calls: int = 2, split_from: int = 4) -> ModelFeed[list[str]]:
        merge = merge or (lambda bs: [x for b in bs for x in b])
        return ModelFeed(
            self.infer,
            self.deliver,
            merge,
            len,
            max_records,
            on_error=self.errors.append,
            calls=calls,
            infer_alone=self.infer_alone,
            split_from=split_from,
        )


async def one_alone_and_two_waiting(
    split_from: int, max_records: int = 8
) -> tuple[AloneOrSideBySide, ModelFeed[list[str]]]:
    """a put first (in the model, alone), then b and c put behind it."""
    steps = AloneOrSideBySide()
    feed = steps.feed(max_records=max_records, split_from=split_from)
    await feed.put(["a"], steps.release("A"))
    await settle()
    for name in "bc":
        await feed.put([name], steps.release(name.upper()))
    return steps, feed


def test_below_split_from_a_call_runs_alone_with_all_that_waits_and_none_starts_beside_it():
    async def main():
        steps, feed = await one_alone_and_two_waiting(split_from=4)
        await settle()
        # a went alone (1 waiting < 4); b and c wait for it although a second call would be free
        assert steps.calls == [["a"]] and steps.alone == [["a"]] and steps.running == 1
        steps.let("a")
        await settle()
        assert steps.calls == [["a"], ["b", "c"]] and steps.alone == [["a"], ["b", "c"]]  # alone again, whole
        steps.let("b")
        await feed.join()
        assert steps.most_at_once == 1 and steps.released == ["A", "B", "C"]

    asyncio.run(main())


def test_from_split_from_waiting_the_calls_go_side_by_side_in_shares_and_back_alone_once_it_drains():
    async def main():
        steps = AloneOrSideBySide()
        feed = steps.feed(max_records=8, split_from=4)
        await feed.put(["a"], steps.release("A"))
        await settle()
        for name, batch in (("C", ["c1", "c2"]), ("D", ["d1"]), ("E", ["e1", "e2"]), ("F", ["f1"])):
            await feed.put(batch, steps.release(name))
        steps.let("a")
        await settle()
        # six waited when a ended (>= 4): two calls side by side, each its share in whole batches, none alone
        assert steps.calls[1:] == [["c1", "c2", "d1"], ["e1", "e2"]] and steps.alone == [["a"]]
        await feed.put(["g"], steps.release("G"))
        await settle()
        assert len(steps.calls) == 3  # both calls busy: f1 and g wait
        steps.let("e1")
        await settle()
        assert steps.calls[-1] == ["f1"] and steps.alone == [["a"]]  # c1's call still runs: f1 goes beside it
        steps.let("f1")
        await settle()
        assert steps.calls[-1] == ["g"] and steps.alone == [["a"]]  # below split_from, but c1's call still runs
        steps.let("c1", "g")
        await settle()
        await feed.put(["h"], steps.release("H"))
        await settle()
        assert steps.alone[-1] == ["h"]  # drained, nothing else running: alone again
        steps.let("h")
        await feed.join()
        assert steps.most_at_once == 2 and steps.released == list("ACDEFGH")
        assert [x for d in steps.delivered for x in d] == [
            f"scored:{x}" for x in ("a", "c1", "c2", "d1", "e1", "e2", "f1", "g", "h")
        ]

    asyncio.run(main())


def test_exactly_split_from_waiting_goes_side_by_side_and_a_failed_alone_call_frees_the_model():
    async def main():
        steps, feed = await one_alone_and_two_waiting(split_from=2)
        steps.let("a")
        await settle()
        assert steps.alone == [["a"]] and steps.calls[1:] == [["b"], ["c"]]  # 2 waited: side by side
        steps.let("b", "c")
        await feed.join()

        failing = AloneOrSideBySide()

        async def broken(batch: list[str]) -> list[str]:
            failing.alone.append(list(batch))
            raise RuntimeError("model down")

        failing.infer_alone = broken
        feed = failing.feed(split_from=4)
        await feed.put(["x"], failing.release("X"))
        await settle()
        await feed.put(["y"], failing.release("Y"))
        await settle()
        # each failure is reported once (not again by its delivery); the model was free again after the first
        # (the next call started, alone); nothing is released
        assert [str(e) for e in failing.errors] == ["model down"] * 2 and failing.alone == [["x"], ["y"]]
        assert failing.released == [] and failing.delivered == []
        feed.cancel()

    asyncio.run(main())


def test_a_split_point_above_max_records_counts_as_max_records():
    """put() waits once max_records wait, so a larger split point would never be reached: no call would ever go
    side by side (a worker with a small stream.max_model_batch and the default split point)."""

    async def main():
        steps, feed = await one_alone_and_two_waiting(split_from=100, max_records=2)
        steps.let("a")
        await settle()
        assert steps.alone == [["a"]] and steps.calls[1:] == [["b"], ["c"]]  # 2 = max_records waited: side by side
        steps.let("b", "c")
        await feed.join()

    asyncio.run(main())


def test_a_batch_is_cut_for_the_calls_only_where_it_would_not_run_alone():
    async def main():
        steps = AloneOrSideBySide()
        alone_below_4 = steps.feed(max_records=8, split_from=4)
        assert [alone_below_4.parts_for(n) for n in (1, 3, 4, 8)] == [1, 1, 2, 2]
        assert steps.feed(max_records=2, split_from=100).parts_for(3) == 2  # the split point counts as max_records
        assert steps.feed(split_from=0).parts_for(1) == 2  # always side by side
        assert steps.feed(calls=1).parts_for(8) == 1

    asyncio.run(main())


def test_without_split_from_or_with_one_call_nothing_goes_alone():
    async def main():
        for calls, split_from in ((2, 0), (1, 4)):
            steps = AloneOrSideBySide()
            feed = steps.feed(calls=calls, split_from=split_from)
            for name in "ab":
                await feed.put([name], steps.release(name.upper()))
                await settle()
            assert steps.alone == [] and steps.running == calls
            steps.let("a", "b")
            await feed.join()

    asyncio.run(main())


def test_a_failed_call_is_reported_once_and_nothing_after_it_is_released():
    async def main():
        steps = HeldCalls()

        async def infer(batch: list[str]) -> list[str]:
            if batch[0] == "b":
                raise RuntimeError("model bug")
            return await HeldCalls.infer(steps, batch)

        steps.infer = infer  # type: ignore[method-assign]
        feed = steps.feed(max_records=1, calls=2)
        for name in "abc":
            await feed.put([name], steps.release(name.upper()))
            await settle()
        steps.let("a", "c")
        await settle()
        assert [str(e) for e in steps.errors] == ["model bug"]
        assert steps.released == ["A"]  # C was scored after B, and B failed: C stays held (never committed)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("n", "calls", "min_part", "sizes"),
    [
        (37, 2, 8, [19, 18]),  # a burst: one part per call
        (15, 2, 8, [15]),  # too small to cut into parts of 8
        (16, 2, 8, [8, 8]),
        (1, 2, 8, [1]),  # a lone headline goes whole
        (100, 3, 8, [34, 33, 33]),
        (100, 1, 8, [100]),  # one call: never cut
        (0, 2, 8, [0]),
    ],
)
def test_a_batch_is_cut_into_one_part_per_call_in_order_without_tiny_parts(n, calls, min_part, sizes):
    batch = list(range(n))
    parts = cut_for_calls(batch, calls, min_part)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == batch


def test_the_workers_merge_keeps_items_encodings_dead_letters_and_corrections_aligned():
    from finsent.model.classifier import Encoded
    from finsent.stream.worker import Scored

    def batch(msgs, items, encoded, outputs=(), failed=(), fixed=None):
        return Scored(list(msgs), list(items), encoded, list(outputs), list(failed), dict(fixed or {}))

    a = batch(["m1", "m2"], [("m1", "i1"), ("m2", "i2")], Encoded(2, {1: "fallback"}, [0], [[101, 7, 102]]))
    poison_only = batch(["m3"], [], None, [("dlq", None, b"x")], [("poison", "bad json")], {"published_clamped": 1})
    b = batch(["m4"], [("m4", "i4")], Encoded(1, {}, [0], [[101, 8, 9, 102]]), fixed={"published_clamped": 2})
    merged = Scored.merged([a, poison_only, b])
    assert merged.messages == ["m1", "m2", "m3", "m4"]
    assert [it for _, it in merged.items] == ["i1", "i2", "i4"]
    assert merged.encoded == Encoded(3, {1: "fallback"}, [0, 2], [[101, 7, 102], [101, 8, 9, 102]])
    assert merged.outputs == [("dlq", None, b"x")] and merged.failed == [("poison", "bad json")]
    assert merged.fixed == {"published_clamped": 3}
    # A batch with items but no encoding (a classifier without ``encode``): the call goes from the texts.
    assert Scored.merged([a, batch(["m5"], [("m5", "i5")], None)]).encoded is None
