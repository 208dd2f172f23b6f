"""The token bucket that paces calls to Google, on a fake clock: no test here sleeps.

What the delivery layer relies on: a full bucket lets a batch out at once, the bucket refills
at (per minute - burst) a minute, a take waits exactly as long as its units need and no
longer, a take larger than the bucket is spent in bucket-sized steps, the bucket never owes
more than one step, and no sixty seconds ever spend more than the per-minute budget.
"""

from __future__ import annotations

import random

import pytest

from followupd.pacing import TokenBucket


class FakeTime:
    """A monotonic clock that moves only when something sleeps (or a test says so)."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


def bucket(time: FakeTime, per_minute: float = 120, burst: float = 60) -> TokenBucket:
    return TokenBucket(per_minute, burst=burst, clock=time.clock, sleep=time.sleep)


def test_a_full_bucket_lets_its_burst_out_at_once(time):
    paced = bucket(time)  # 60 units at once, then 1 a second
    paced.take(60)
    assert time.sleeps == [] and paced.waited == 0


def test_one_unit_past_the_burst_waits_for_the_refill(time):
    paced = bucket(time)
    paced.take(60)
    paced.take(1)
    assert time.sleeps == [pytest.approx(1.0)]


def test_the_bucket_refills_at_the_budget_less_the_burst(time):
    paced = bucket(time, per_minute=600, burst=300)  # refills 300 a minute: 5 a second
    assert paced.rate == pytest.approx(5.0)
    paced.take(300)
    time.advance(10)  # 50 units back
    paced.take(50)
    assert time.sleeps == []
    paced.take(5)
    assert time.sleeps == [pytest.approx(1.0)]


def test_the_refill_stops_at_a_full_bucket(time):
    paced = bucket(time)
    time.advance(3600)  # an idle hour does not bank an hour of units
    paced.take(60)
    paced.take(1)
    assert time.sleeps == [pytest.approx(1.0)]


def test_the_burst_is_at_most_half_the_budget(time):
    paced = bucket(time, per_minute=60, burst=1000)
    assert paced.capacity == 30 and paced.rate == pytest.approx(0.5)
    paced.take(30)
    assert time.sleeps == []
    paced.take(1)
    assert time.sleeps == [pytest.approx(2.0)]


def test_a_take_waits_exactly_as_long_as_its_units_need(time):
    paced = bucket(time)
    paced.take(60)
    time.advance(3)  # 3 units back: 2 more to wait for
    paced.take(5)
    assert time.sleeps == [pytest.approx(2.0)]
    paced.take(4)  # nothing left over from that wait, and nothing owed either
    assert time.sleeps[1:] == [pytest.approx(4.0)]
    assert paced.waited == pytest.approx(6.0)


def test_a_take_larger_than_the_bucket_is_spent_in_bucket_sized_steps(time):
    paced = bucket(time)  # 60 in the bucket, 1 a second
    paced.take(150)  # 60 now; 60 after a minute; the last 30 after half a minute more
    assert time.sleeps == [pytest.approx(60.0), pytest.approx(30.0)]
    assert paced.waited == pytest.approx(90.0)
    assert max(time.sleeps) <= paced.capacity / paced.rate


def test_the_bucket_never_owes_more_than_one_step(time):
    """A take reserves its units at once and waits its debt out: the bucket goes below empty
    by at most what that one take (one step of it) reserved, never by a backlog of takes."""
    paced = bucket(time, per_minute=1000, burst=100)
    reserve = paced._reserve
    owed: list[tuple[float, float]] = []  # (how far below empty, the step that went there)

    def watched(step: float) -> float:
        debt = reserve(step)
        owed.append((debt, step))
        return debt

    paced._reserve = watched
    draws = random.Random(7)
    for _ in range(500):
        paced.take(draws.choice([1, 5, 10, 50, 99, 100, 101, 250]))
        time.advance(draws.choice([0.0, 0.0, 0.01, 0.5, 3.0]))
    assert max(debt for debt, _ in owed) > 0  # it did go into debt
    assert all(debt <= step + 1e-9 and step <= paced.capacity for debt, step in owed)


def spend(paced: TokenBucket, time: FakeTime, costs: list[float], gaps: list[float]):
    """Take at random; (when each take's units went out, how many)."""
    draws = random.Random(len(costs))
    spent: list[tuple[float, float]] = []
    while time.now < 1000.0 + 600:
        cost = draws.choice(costs)
        paced.take(cost)
        spent.append((time.now, cost))
        time.advance(draws.choice(gaps))
    return spent


def busiest_minute(spent: list[tuple[float, float]]) -> float:
    """The most units that went out in any sixty seconds (`spent` is in time order)."""
    busiest = total = 0.0
    first = 0
    for when, cost in spent:
        total += cost
        while spent[first][0] <= when - 60:
            total -= spent[first][1]
            first += 1
        busiest = max(busiest, total)
    return busiest


@pytest.mark.parametrize("per_minute, burst", [(120, 60), (6000, 1000), (90, 10)])
def test_no_sixty_seconds_spend_more_than_the_budget(time, per_minute, burst):
    paced = bucket(time, per_minute=per_minute, burst=burst)
    costs = [1, 2, 5, paced.capacity / 2, paced.capacity]
    spent = spend(paced, time, costs, gaps=[0.0, 0.0, 0.1, 1.0])
    assert busiest_minute(spent) <= per_minute + 1e-6


@pytest.mark.xfail(
    strict=True,
    reason="a take larger than the bucket goes out whole once its last step is paid, and "
    "the refill after it is spent again at once: 159 units in a minute on a 120 budget. "
    "Delivery never asks for that: PacedCalls sizes its batches to the bucket (below)",
)
def test_a_take_larger_than_the_bucket_keeps_to_the_budget(time):
    paced = bucket(time, per_minute=120, burst=60)
    paced.take(100)  # 60 from the full bucket, 40 more after 40 s: then all 100 go out
    spent = [(time.now, 100.0)]
    while time.now < 1000.0 + 200:
        paced.take(1)
        spent.append((time.now, 1.0))
    assert busiest_minute(spent) <= 120


def test_delivery_sizes_its_batches_to_a_small_budgets_bucket(time):
    """Fifty drafts (10 units each) on a 120-unit budget: batches of 6, never a take
    larger than the bucket's 60 units, and no sixty seconds over the budget."""
    from followupd.delivery.googleapi import Counters, PacedCalls

    paced = bucket(time, per_minute=120, burst=500)
    taken: list[tuple[float, float]] = []
    real_take = paced.take

    def take(cost: float) -> None:
        real_take(cost)
        taken.append((time.now, cost))

    paced.take = take
    calls = PacedCalls(
        uri="",
        transport=None,
        batch_size=50,
        bucket=paced,
        costs={"drafts.create": 10},
        counters=Counters(),
    )
    assert calls.chunk_size("drafts.create") == 6
    for start in range(0, 50, calls.chunk_size("drafts.create")):
        paced.take(10 * len(range(start, min(50, start + 6))))
    assert max(cost for _, cost in taken) <= paced.capacity
    for at, _ in taken:
        assert sum(c for t, c in taken if at <= t < at + 60) <= 120
