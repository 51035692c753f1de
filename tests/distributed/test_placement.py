"""Load-aware placement of chunks on replicas, with fake replicas (no Ray, no engines)."""

from __future__ import annotations

import heapq
import itertools

import pytest

from chatterbox_vllm.distributed.placement import (
    LoadAwarePlacement,
    PlacedChunk,
)


def chunks(*tokens: int) -> list[PlacedChunk[str]]:
    return [
        PlacedChunk(order=i, estimated_tokens=t, payload=f"chunk {i}") for i, t in enumerate(tokens)
    ]


def drain_calls(placement: LoadAwarePlacement) -> list:
    calls = []
    while (call := placement.next_call()) is not None:
        calls.append(call)
    return calls


def test_one_long_chunk_weighs_as_much_as_many_short_ones() -> None:
    """Round-robin would give each replica 4 chunks; by pending tokens, the replica holding the
    400-token chunk gets only short ones after it, until both carry similar loads."""
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=1, max_calls_per_replica=100
    )
    placement.add_replica("a")
    placement.add_replica("b")
    placement.submit(chunks(400, 50, 50, 50, 50, 50, 50, 50))
    calls = drain_calls(placement)
    by_replica = {r: [c.chunks[0].order for c in calls if c.replica == r] for r in ("a", "b")}
    assert by_replica == {"a": [0], "b": [1, 2, 3, 4, 5, 6, 7]}
    assert placement.pending_tokens("a") == 400
    assert placement.pending_tokens("b") == 350


def test_call_is_filled_to_the_replicas_fair_share_not_to_the_batch_limit() -> None:
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=32, max_calls_per_replica=2
    )
    for name in ("a", "b", "c"):
        placement.add_replica(name)
    placement.submit(chunks(*[10] * 30))
    calls = drain_calls(placement)
    # 300 tokens over 3 replicas: one call of 100 tokens each, taken in text order.
    assert [(c.replica, [ch.order for ch in c.chunks]) for c in calls] == [
        ("a", list(range(0, 10))),
        ("b", list(range(10, 20))),
        ("c", list(range(20, 30))),
    ]
    assert placement.queued == 0 and placement.in_flight == 30


def test_limits_per_call_and_per_replica() -> None:
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=4, max_calls_per_replica=2
    )
    placement.add_replica("a")
    placement.add_replica("b")
    placement.submit(chunks(*[10] * 40))
    calls = drain_calls(placement)
    assert len(calls) == 4 and all(len(c.chunks) == 4 for c in calls)
    assert {placement.outstanding_calls(r) for r in ("a", "b")} == {2}
    assert placement.queued == 24  # the rest waits for whichever replica frees a slot first
    finished = next(c for c in calls if c.replica == "b")
    placement.complete(finished.call_id)
    follow_up = placement.next_call()
    assert follow_up is not None and follow_up.replica == "b"
    assert [ch.order for ch in follow_up.chunks] == [16, 17, 18, 19]  # the queue's head


def test_failed_replica_chunks_go_back_first_in_order_and_count_an_attempt() -> None:
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=3, max_calls_per_replica=1
    )
    placement.add_replica("a")
    placement.add_replica("b")
    placement.submit(chunks(*[10] * 9))
    first_a, first_b = drain_calls(placement)
    assert [ch.order for ch in first_a.chunks] == [0, 1, 2]
    assert placement.queued == 3

    requeued = placement.remove_replica("a")
    assert [ch.order for ch in requeued] == [0, 1, 2]
    assert all(ch.attempts == 1 for ch in requeued)
    assert placement.replicas == ["b"] and placement.queued == 6
    with pytest.raises(KeyError, match="not outstanding"):
        placement.complete(first_a.call_id)  # a dead replica's call can never complete

    placement.complete(first_b.call_id)
    retry = placement.next_call()
    assert retry is not None and retry.replica == "b"
    assert [ch.order for ch in retry.chunks] == [0, 1, 2]


def test_new_replica_joins_and_takes_work() -> None:
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=2, max_calls_per_replica=1
    )
    placement.add_replica("a")
    placement.submit(chunks(*[10] * 6))
    assert placement.next_call().replica == "a"
    assert placement.next_call() is None  # a's only slot is taken
    placement.add_replica("replacement")
    call = placement.next_call()
    assert call is not None and call.replica == "replacement"
    with pytest.raises(ValueError, match="already placed"):
        placement.add_replica("a")


def test_bad_limits_and_estimates_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_chunks_per_call"):
        LoadAwarePlacement(max_chunks_per_call=0)
    with pytest.raises(ValueError, match="max_calls_per_replica"):
        LoadAwarePlacement(max_chunks_per_call=1, max_calls_per_replica=True)
    with pytest.raises(ValueError, match="estimated_tokens"):
        PlacedChunk(order=0, estimated_tokens=0, payload=None)
    with pytest.raises(KeyError, match="not placed"):
        LoadAwarePlacement(max_chunks_per_call=1).remove_replica("ghost")


def simulate(
    speeds: dict[str, float], tokens: list[int], fail: dict[str, float] | None = None
) -> tuple[dict[int, int], dict[str, int], float]:
    """Event-driven run of the placement on fake replicas decoding ``speeds`` tokens per second
    (a call takes its tokens / speed, calls on one replica run one after another); ``fail``
    kills a replica at a time. Returns deliveries per chunk, tokens done per replica, makespan."""
    placement: LoadAwarePlacement[str, str] = LoadAwarePlacement(
        max_chunks_per_call=4, max_calls_per_replica=2
    )
    for name in speeds:
        placement.add_replica(name)
    placement.submit(chunks(*tokens))
    events: list[tuple[float, int, str, int]] = []  # (time, tie, kind, call id / replica)
    tie = itertools.count()
    busy_until = dict.fromkeys(speeds, 0.0)
    owner: dict[int, str] = {}
    for name, at in (fail or {}).items():
        heapq.heappush(events, (at, next(tie), "fail", name))
    delivered: dict[int, int] = {}
    done: dict[str, int] = dict.fromkeys(speeds, 0)
    now = 0.0
    alive = set(speeds)

    def send() -> None:
        while (call := placement.next_call()) is not None:
            start = max(now, busy_until[call.replica])
            busy_until[call.replica] = start + call.tokens / speeds[call.replica]
            owner[call.call_id] = call.replica
            heapq.heappush(events, (busy_until[call.replica], next(tie), "done", call.call_id))

    send()
    while events:
        now, _, kind, what = heapq.heappop(events)
        if kind == "fail":
            alive.discard(what)
            placement.remove_replica(what)
        elif owner[what] in alive:
            call = placement.complete(what)
            for chunk in call.chunks:
                delivered[chunk.order] = delivered.get(chunk.order, 0) + 1
                done[call.replica] += chunk.estimated_tokens
        send()
    return delivered, done, now


def test_faster_replica_gets_more_work_and_every_chunk_is_delivered_once() -> None:
    tokens = [100 + (i * 37) % 150 for i in range(60)]
    delivered, done, makespan = simulate({"fast": 300.0, "slow": 100.0}, tokens)
    assert delivered == dict.fromkeys(range(60), 1)
    assert done["fast"] > 2 * done["slow"]
    # Close to the ideal split of 3:1 (all tokens / total speed), far from round-robin's.
    ideal = sum(tokens) / 400.0
    round_robin = sum(tokens[1::2]) / 100.0
    assert makespan < 1.2 * ideal < round_robin


def test_replica_failing_mid_run_loses_and_duplicates_nothing() -> None:
    tokens = [120] * 40
    delivered, done, _ = simulate({"a": 200.0, "b": 200.0, "c": 200.0}, tokens, fail={"b": 3.0})
    assert delivered == dict.fromkeys(range(40), 1)
    assert sum(done.values()) == sum(tokens)
