"""``wait_until``, the tests' polling helper: an unreachable server is "not yet", a failed
assertion is a failure at once (a check that must hold all along could never fail otherwise)."""

from __future__ import annotations

import time

import pytest

from cli.embedded import wait_until

pytestmark = pytest.mark.timeout(30)


async def test_an_assertion_in_the_predicate_fails_at_once() -> None:
    calls = 0

    async def never_in_a_bad_state() -> bool:
        nonlocal calls
        calls += 1
        assert calls < 3, "a bad state was seen"
        return False

    started = time.monotonic()
    with pytest.raises(AssertionError, match="a bad state was seen"):
        await wait_until(never_in_a_bad_state, 10, interval=0.01)
    assert time.monotonic() - started < 5 and calls == 3


async def test_errors_are_not_yet_and_the_last_one_explains_the_timeout() -> None:
    calls = 0

    async def server_comes_up() -> bool:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError("not listening yet")
        return True

    await wait_until(server_comes_up, 10, interval=0.01)
    assert calls == 3

    async def never_up() -> bool:
        raise ConnectionRefusedError("still not listening")

    with pytest.raises(TimeoutError, match="still not listening") as timed_out:
        await wait_until(never_up, 0.2, interval=0.01)
    assert isinstance(timed_out.value.__cause__, ConnectionRefusedError)
