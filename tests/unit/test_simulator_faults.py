import asyncio

import pytest

from gateway.simulator.faults import FaultError, Faults, FaultSpec

CONV = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def test_spec_parses_every_switch():
    spec = FaultSpec.from_json(
        {"drop_every": 5, "status": 503, "count": 2, "stall": True, "unauthorized": False,
         "missing": [CONV.upper()], "garbage": True, "stale_after": 3}
    )  # fmt: skip
    assert spec == FaultSpec(
        drop_every=5, status=503, count=2, stall=True, unauthorized=False, missing=(CONV,), garbage=True, stale_after=3
    )


@pytest.mark.parametrize(
    "obj",
    [[], {"nope": 1}, {"drop_every": -1}, {"drop_every": True}, {"status": 200}, {"status": "503"},
     {"missing": ["not-a-uuid"]}, {"missing": CONV}, {"stall": 1}],
)  # fmt: skip
def test_spec_rejects_malformed(obj):
    with pytest.raises(FaultError):
        FaultSpec.from_json(obj)


def test_status_fault_counts_down():
    faults = Faults()
    faults.apply(FaultSpec(status=502, count=2))
    assert [faults.take_status() for _ in range(3)] == [502, 502, None]
    faults.apply(FaultSpec(status=503))
    assert [faults.take_status() for _ in range(2)] == [503, None]


def test_garbage_fires_once_and_clear_resets_everything():
    faults = Faults()
    faults.apply(FaultSpec.from_json({"garbage": True, "drop_every": 4, "stall": True, "missing": [CONV]}))
    assert faults.take_garbage() and not faults.take_garbage()
    assert faults.stalled and faults.missing == {CONV}
    faults.apply(FaultSpec(clear=True))
    assert faults.snapshot() == Faults().snapshot()
    assert not faults.stalled


def test_stall_releases_waiters_when_cleared():
    async def scenario() -> None:
        faults = Faults()
        faults.apply(FaultSpec(stall=True))
        waiter = asyncio.create_task(faults.wait_unstalled())
        await asyncio.sleep(0)
        assert not waiter.done()
        faults.apply(FaultSpec(stall=False))
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())
