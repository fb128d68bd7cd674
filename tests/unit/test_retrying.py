"""pipeline.retrying: the one back-off curve, async retries on named errors, the blocking retry-until."""
from __future__ import annotations

import asyncio
import itertools
import logging
from types import SimpleNamespace

import pytest
import tenacity
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError, TimeoutError as RedisTimeoutError

from pipeline.retrying import Backoff, retry_async, retry_until


class Flaky:
    """An async call that raises `errors` one after another, then answers `result`."""

    def __init__(self, *errors: BaseException, result="ok"):
        self.errors, self.result, self.calls = list(errors), result, []

    async def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Sleeps:
    """A fake sleep that records the back-offs instead of waiting."""

    def __init__(self):
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# --------------------------------------------------------------------------- the curve

def test_backoff_doubles_from_the_first_delay_up_to_the_cap():
    b = Backoff(0.1, cap_s=1.0)
    assert [b.delay(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert Backoff(0.05).delay(3) == pytest.approx(0.2)  # no cap by default


def test_backoff_of_a_very_long_outage_stays_at_the_cap():
    assert Backoff(0.1, cap_s=5.0).delay(100_000) == 5.0


# --------------------------------------------------------------------------- retry_async

def test_retries_the_named_errors_with_backoff_and_passes_the_arguments():
    sleeps = Sleeps()
    call = retry_async(ConnectionError, Backoff(0.1, cap_s=0.3), sleep=sleeps)
    flaky = Flaky(ConnectionError("down"), ConnectionError("down"), ConnectionError("down"), result=42)
    assert asyncio.run(call(flaky, "sku", n=3)) == 42
    assert flaky.calls == [(("sku",), {"n": 3})] * 4
    assert sleeps.delays == pytest.approx([0.1, 0.2, 0.3])


def test_a_call_that_works_is_called_once_and_never_waits():
    sleeps = Sleeps()
    flaky = Flaky(result="fine")
    assert asyncio.run(retry_async(OSError, Backoff(1.0), sleep=sleeps)(flaky)) == "fine"
    assert len(flaky.calls) == 1 and sleeps.delays == []


def test_other_errors_stop_at_once():
    sleeps = Sleeps()
    flaky = Flaky(ConnectionError("down"), KeyError("bug"))
    with pytest.raises(KeyError):
        asyncio.run(retry_async(ConnectionError, Backoff(0.1), sleep=sleeps)(flaky))
    assert len(flaky.calls) == 2 and sleeps.delays == [0.1]
    first_error_is_foreign = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError):
        asyncio.run(retry_async(ConnectionError, Backoff(0.1), sleep=sleeps)(first_error_is_foreign))
    assert len(first_error_is_foreign.calls) == 1 and sleeps.delays == [0.1]


def test_attempts_bound_the_calls_and_the_last_error_is_raised():
    sleeps = Sleeps()
    flaky = Flaky(*(TimeoutError(f"try {i}") for i in range(1, 6)))
    with pytest.raises(TimeoutError, match="try 3"):
        asyncio.run(retry_async(TimeoutError, Backoff(0.05), attempts=3, sleep=sleeps)(flaky))
    assert len(flaky.calls) == 3 and sleeps.delays == pytest.approx([0.05, 0.1])
    once = Flaky(TimeoutError("only try"))
    with pytest.raises(TimeoutError, match="only try"):
        asyncio.run(retry_async(TimeoutError, Backoff(0.05), attempts=1, sleep=sleeps)(once))
    assert len(once.calls) == 1
    with pytest.raises(ValueError):
        retry_async(TimeoutError, Backoff(0.05), attempts=0)


def test_without_attempts_it_retries_for_as_long_as_it_takes():
    sleeps = Sleeps()
    flaky = Flaky(*(ConnectionError() for _ in range(60)))
    assert asyncio.run(retry_async(ConnectionError, Backoff(0.1, cap_s=5.0), sleep=sleeps)(flaky)) == "ok"
    assert len(flaky.calls) == 61 and len(sleeps.delays) == 60 and sleeps.delays[-1] == 5.0


def test_before_sleep_sees_every_failure_and_the_coming_delay():
    seen = []
    call = retry_async(ConnectionError, Backoff(0.1), sleep=Sleeps(),
                       before_sleep=lambda s: seen.append((s.attempt_number, str(s.outcome.exception()),
                                                           s.upcoming_sleep)))
    asyncio.run(call(Flaky(ConnectionError("refused"), ConnectionError("reset"))))
    assert seen == [(1, "refused", pytest.approx(0.1)), (2, "reset", pytest.approx(0.2))]


def test_overlapping_calls_keep_their_own_count():
    """One policy serves many tasks at once (the worker's agents and timers): no shared state."""
    async def scenario():
        call = retry_async(ConnectionError, Backoff(0.001), attempts=3)
        fails_twice = [Flaky(ConnectionError(), ConnectionError(), result=i) for i in range(20)]
        fails_always = [Flaky(*(ConnectionError() for _ in range(5))) for _ in range(20)]
        got = await asyncio.gather(*(call(f) for f in fails_twice + fails_always), return_exceptions=True)
        return fails_twice, fails_always, got

    fails_twice, fails_always, got = asyncio.run(scenario())
    assert got[:20] == list(range(20))
    assert all(isinstance(g, ConnectionError) for g in got[20:])
    assert all(len(f.calls) == 3 for f in fails_twice + fails_always)


def test_cancellation_is_not_retried():
    async def scenario():
        started = asyncio.Event()

        async def hangs():
            started.set()
            await asyncio.sleep(30)

        task = asyncio.ensure_future(retry_async(Exception, Backoff(0.01))(hangs))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), timeout=5))


# --------------------------------------------------------------------------- the worker's Redis retry

def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_redis_retry_counts_the_metric_marks_redis_down_and_logs(caplog):
    """The worker's own policy, real sleeps: 0.1 s, 0.2 s, 0.4 s between the attempts."""
    from agents import inventory

    before = sample("orderstream_redis_retries_total")
    flaky = Flaky(RedisConnectionError("Connection refused"), ConnectionRefusedError(111, "refused"),
                  RedisTimeoutError("Timeout reading from socket"), result={"A": {}})
    with caplog.at_level(logging.WARNING, logger="agents.inventory"):
        assert asyncio.run(inventory.with_redis_retry(flaky, ["A"])) == {"A": {}}
    assert flaky.calls == [((["A"],), {})] * 4
    assert sample("orderstream_redis_retries_total") - before == 3
    assert sample("orderstream_dependency_up", dependency="redis") == 0
    assert [r.getMessage() for r in caplog.records] == [
        "redis unavailable (Connection refused); retrying in 0.1s",
        "redis unavailable ([Errno 111] refused); retrying in 0.2s",
        "redis unavailable (Timeout reading from socket); retrying in 0.4s"]
    # a script error is a bug, not an outage: raised at once, not counted
    with pytest.raises(ResponseError):
        asyncio.run(inventory.with_redis_retry(Flaky(ResponseError("NOSCRIPT"))))
    assert sample("orderstream_redis_retries_total") - before == 3


# --------------------------------------------------------------------------- retry_until

class Clock:
    """tenacity's clock (its `time.monotonic`), moved on by the fake sleep only."""

    def __init__(self):
        self.now, self.delays = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds


def test_retry_until_stops_as_soon_as_the_attempt_succeeds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tenacity, "time", SimpleNamespace(monotonic=clock.monotonic))
    answers = iter([False, False, True])
    assert retry_until(lambda: next(answers), Backoff(0.2, cap_s=30), timeout_s=30, sleep=clock.sleep) is True
    assert clock.delays == pytest.approx([0.2, 0.4])


def test_retry_until_gives_up_before_a_backoff_would_pass_the_timeout(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tenacity, "time", SimpleNamespace(monotonic=clock.monotonic))
    calls = itertools.count(1)
    assert retry_until(lambda: next(calls) and False, Backoff(1.0, cap_s=4.0), timeout_s=10, sleep=clock.sleep) is False
    # waits 1 + 2 + 4 = 7 s; a fourth back-off of 4 s would end at 11 s > 10 s: stop after 4 attempts
    assert clock.delays == [1.0, 2.0, 4.0] and next(calls) == 5
