"""DelayedStarts: callbacks run once due, cancelled ones never, from one timer per loop."""

from __future__ import annotations

import asyncio

from gateway.http.delayed_watch import DelayedStarts, delayed_starts


def run(coro):
    return asyncio.run(coro)


def test_a_callback_runs_after_the_delay_and_not_before():
    async def main():
        loop = asyncio.get_running_loop()
        starts = DelayedStarts(loop, 0.05)
        ran = []
        added = loop.time()
        starts.add(lambda: ran.append(loop.time()))
        await asyncio.sleep(0.02)
        assert ran == []
        await asyncio.sleep(0.06)
        assert len(ran) == 1 and ran[0] - added >= 0.05
        assert len(starts) == 0

    run(main())


def test_a_cancelled_callback_never_runs_and_the_later_ones_still_do():
    # Checked against the loop's clock, not against sleeps of fixed length, which a loaded machine
    # can stretch past the second callback's due time; the delay is long enough that the first is
    # cancelled before it is due even when the 10 ms sleep below runs ten times late.
    async def main():
        loop = asyncio.get_running_loop()
        starts = DelayedStarts(loop, 0.3)
        ran = []
        first = starts.add(lambda: ran.append(("first", loop.time())))
        first_due = loop.time() + starts.delay_s
        await asyncio.sleep(0.01)
        assert loop.time() < first_due, "the box stalled past the first callback's due time"
        second_due = loop.time() + starts.delay_s
        starts.add(lambda: ran.append(("second", loop.time())))
        starts.cancel(first)
        starts.cancel(first)  # twice is harmless
        # the timer armed for the first fires, finds the second not yet due and re-arms for it
        for _ in range(200):
            if ran:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)  # anything else that would run has had its chance
        assert [name for name, _ in ran] == ["second"]
        assert ran[0][1] >= second_due
        assert len(starts) == 0

    run(main())


def test_callbacks_run_in_the_order_they_were_added_from_one_timer_at_a_time():
    async def main():
        loop = asyncio.get_running_loop()
        armed = []
        real_call_at = loop.call_at

        def counting_call_at(when, callback, *args, **kwargs):
            if callback == starts._fire:
                armed.append(when)
            return real_call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at
        starts = DelayedStarts(loop, 0.02)
        ran = []
        for i in range(50):
            starts.add(lambda i=i: ran.append(i))
        assert len(armed) == 1  # fifty requests, one timer
        await asyncio.sleep(0.05)
        assert ran == list(range(50))
        assert len(armed) <= 2

    run(main())


def test_one_failing_callback_does_not_keep_the_others_from_running():
    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
        starts = DelayedStarts(loop, 0.01)
        ran = []

        def fails() -> None:
            raise RuntimeError("broken watch")

        starts.add(fails)
        starts.add(lambda: ran.append("after"))
        await asyncio.sleep(0.04)
        assert ran == ["after"]
        assert [str(e) for e in reported] == ["broken watch"]

    run(main())


def test_each_loop_has_its_own_and_the_same_one_is_returned_within_a_loop():
    async def first_loop():
        return delayed_starts(0.02), delayed_starts(0.02)

    a, b = run(first_loop())
    c, _ = run(first_loop())
    assert a is b
    assert c is not a
