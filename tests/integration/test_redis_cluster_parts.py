"""Cluster building blocks against a real redis-server: key layout, retention, fencing, lease, tailer, faults."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from gateway.backoff import Backoff
from gateway.cluster import ClusterSink, JournalTailer, Lease, hold_lease
from gateway.envelope import Envelope
from gateway.errors import ConfigError, JournalConflict
from gateway.hub import Hub
from gateway.journal.base import JournalHead
from gateway.journal.redis import JournalUnavailable, RedisJournal
from tests.redis_server import RedisServer, free_port
from tests.waiting import eventually

pytestmark = pytest.mark.integration

CID = "0b7c8a52-3f7e-4d8e-9a4e-5d1f2c3b4a59"
PREFIX = "hqgw"


def env(seq: int, created_ms: int | None = None, tag: str = "") -> Envelope:
    created = int(time.time() * 1000) if created_ms is None else created_ms
    return Envelope(seq, "S", b'{"s":%d,"by":"%s"}' % (seq, tag.encode()), created)


def client(url: str) -> redis.asyncio.Redis:
    # No client-side retries: the tests observe failures and the gateway's own recovery.
    return redis.asyncio.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1, socket_timeout=5)


def tail_client(url: str) -> redis.asyncio.Redis:
    # What tailers get in production: no socket timeout (the tailer bounds its reads itself).
    return redis.asyncio.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1, socket_timeout=None)


def journal(c: redis.asyncio.Redis, max_events: int = 1000, max_age_s: float = 600, **kw: object) -> RedisJournal:
    return RedisJournal(c, prefix=PREFIX, max_events=max_events, max_age_s=max_age_s, **kw)  # type: ignore[arg-type]


wait_for = eventually


async def stop(task: "asyncio.Task[None]") -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    assert done and task.cancelled(), "task still running 1 s after cancel"


def run(test: Callable[[redis.asyncio.Redis], Awaitable[None]], url: str) -> None:
    async def main() -> None:
        c = client(url)
        try:
            await test(c)
        finally:
            await c.aclose()

    asyncio.run(main())


def test_keys_carry_the_hash_tag_and_a_retention_ttl(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c, max_age_s=60)
        assert await Lease(c, PREFIX, CID, "a", 5000).acquire()
        await j.append(CID, [env(1)], "h1", owner="a")
        keys = sorted(k.decode() for k in await c.keys("*"))
        assert keys == [f"hqgw:{{{CID}}}:{kind}" for kind in ("journal", "lease", "meta")]
        assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot
        for kind in ("journal", "meta"):
            assert 0 < await c.pttl(f"hqgw:{{{CID}}}:{kind}") <= 60_000
        entry = (await c.xrange(f"hqgw:{{{CID}}}:journal"))[0]
        # The entry carries the HQ cursor it was appended with: a tailer knows it even if meta is lost.
        assert entry[0] == b"1-0" and entry[1][b"cursor"] == b"h1"
        assert set(entry[1]) == {b"stage", b"body", b"created_ms", b"scope", b"cursor"}
        assert await c.hgetall(f"hqgw:{{{CID}}}:meta") == {b"seq": b"1", b"first": b"1", b"cursor": b"h1"}
        with pytest.raises(ConfigError):
            RedisJournal(c, prefix="x{y}", max_events=1, max_age_s=1)

    run(t, redis_url)


def test_idle_conversation_costs_nothing_then_starts_a_new_incarnation(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c, max_age_s=0.2)
        await j.append(CID, [env(5)], "h5")

        async def gone() -> bool:
            return await c.exists(f"hqgw:{{{CID}}}:journal", f"hqgw:{{{CID}}}:meta") == 0

        await wait_for(gone, 3.0, "retention TTL")
        assert await j.head(CID) == JournalHead()
        await j.append(CID, [env(1_771_000_000_000)], "h6")  # any positive seq starts the new incarnation
        assert (await j.head(CID)).first == 1_771_000_000_000

    run(t, redis_url)


def test_retention_trims_storage_exactly_by_count_and_by_age(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c, max_events=5)
        for seq in range(1, 13):
            await j.append(CID, [env(seq)], None)
        assert await c.xlen(f"hqgw:{{{CID}}}:journal") == 5  # exact MAXLEN, not approximate
        assert (await j.head(CID)).oldest == 8

        now = [0.0]
        aged = journal(c, max_events=1000, max_age_s=10, clock=lambda: now[0])
        await aged.append("aged", [env(s, s) for s in range(1, 501)], None)  # created_ms = seq
        now[0] = 10.3  # cutoff 300 ms: seqs 1..299 are past retention
        await aged.append("aged", [env(501, 10_300)], None)
        assert await c.xlen("hqgw:{aged}:journal") == 501 - 300 + 1
        assert (await aged.head("aged")).oldest == 300

    run(t, redis_url)


def test_fencing_a_stale_owner_appends_nothing(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c)
        lease = Lease(c, PREFIX, CID, "a", 5000)
        assert await lease.acquire()
        await j.append(CID, [env(1)], "h1", owner="a")
        before = await c.xrange(f"hqgw:{{{CID}}}:journal")
        with pytest.raises(JournalConflict, match="lease held by a"):
            await j.append(CID, [env(2)], "h2", owner="b")
        with pytest.raises(JournalConflict):
            await j.append(CID, [], "h2", owner="b")  # not even the cursor moves
        await lease.release()
        with pytest.raises(JournalConflict, match="lease held by nobody"):
            await j.append(CID, [env(2)], "h2", owner="a")
        assert await c.xrange(f"hqgw:{{{CID}}}:journal") == before
        assert await j.head(CID) == JournalHead(1, 1, "h1", 1)

    run(t, redis_url)


def test_lease_acquire_renew_expire_release(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        a, b = (Lease(c, PREFIX, CID, owner, 300) for owner in ("a", "b"))
        assert await a.acquire() and not await b.acquire()
        assert await a.acquire()  # already ours: renewed
        assert await a.renew() and await b.holder() == "a"
        assert not await b.renew()
        await b.release()  # not b's to release
        assert await a.holder() == "a"
        await wait_for(lambda: _is_none(a.holder()), 2.0, "lease expiry")
        assert not await a.renew()
        assert await b.acquire()  # takeover after expiry
        await a.release()
        assert await a.holder() == "b"
        await b.release()
        assert await a.holder() is None and await a.acquire()

    run(t, redis_url)


async def _is_none(value: Awaitable[str | None]) -> bool:
    return await value is None


def test_hold_lease_keeps_it_across_ttls_and_reports_a_takeover(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        a, b = (Lease(c, PREFIX, CID, owner, 300) for owner in ("a", "b"))
        lost = asyncio.Event()
        assert await a.acquire()
        holder = asyncio.create_task(hold_lease(a, lost.set))
        deadline = time.monotonic() + 1.0  # more than three TTLs
        while time.monotonic() < deadline:
            assert not await b.acquire()
            await asyncio.sleep(0.05)
        await c.delete(a.key)  # an operator (or a pause) loses it; b takes over
        assert await b.acquire()
        async with asyncio.timeout(1):
            await lost.wait()
            await holder  # returns after reporting
        assert await b.holder() == "b"

    run(t, redis_url)


def test_hold_lease_gives_up_before_the_ttl_when_redis_is_unreachable(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()

    async def t(c: redis.asyncio.Redis) -> None:
        lease = Lease(c, PREFIX, CID, "a", 900)
        lost_at: list[float] = []
        assert await lease.acquire()
        holder = asyncio.create_task(hold_lease(lease, lambda: lost_at.append(time.monotonic())))
        acquired = lease.confirmed_at
        await wait_for(lambda: lease.confirmed_at != acquired, what="a renewal")
        confirmed = lease.confirmed_at
        assert confirmed is not None
        server.kill()
        async with asyncio.timeout(2):
            await holder  # returns after reporting
        assert 0.5 < lost_at[0] - confirmed < 0.9  # retried for a while, stopped before the TTL ran out

    run(t, server.url)


def test_paused_holder_is_fenced_after_takeover(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c)
        a, b = Lease(c, PREFIX, CID, "a", 200), Lease(c, PREFIX, CID, "b", 200)
        sink_a, sink_b = ClusterSink(j, "a"), ClusterSink(j, "b")
        assert await a.acquire()
        await sink_a.emit(CID, [env(1, tag="a"), env(2, tag="a")], "h2")
        # a pauses (no renewals); b takes over once the TTL lapses and resumes from the stored cursor.
        await wait_for(b.acquire, 2.0, "takeover")
        head = await j.head(CID)
        assert (head.seq, head.cursor) == (2, "h2")
        await sink_b.emit(CID, [env(3, tag="b")], "h3")
        with pytest.raises(JournalConflict):
            await sink_a.emit(CID, [env(3, tag="a")], "h3-from-a")  # a wakes up: appends nothing
        got = await j.read(CID, 0, 10)
        assert [(e.seq, e.body.endswith(b'"a"}')) for e in got] == [(1, True), (2, True), (3, False)]
        assert (await j.head(CID)).cursor == "h3"

    run(t, redis_url)


def test_journal_unavailable_when_redis_is_down(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()

    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c)
        await j.append(CID, [env(1)], "h1")
        server.kill()
        for call in (j.head(CID), j.read(CID, 0, 10), j.append(CID, [env(2)], "h2")):
            with pytest.raises(JournalUnavailable):
                await call
        with pytest.raises(JournalUnavailable):
            await Lease(c, PREFIX, CID, "a", 1000).acquire()
        server.start()  # non-persistent: the journal is gone, the same client reconnects by itself
        assert await j.head(CID) == JournalHead()

    run(t, server.url)
    nobody = client(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(JournalUnavailable):
        asyncio.run(journal(nobody).head(CID))


def test_tailer_delivers_in_order_across_a_redis_restart(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(persistent=True)
    total = 300

    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c)
        seen: list[int] = []
        reader = tail_client(server.url)
        tailer = JournalTailer(reader, j, CID, lambda e: seen.extend(x.seq for x in e), 0, backoff=Backoff(0.02, 0.2))
        tail = asyncio.create_task(tailer.run())
        failures = 0

        async def write() -> None:
            nonlocal failures
            seq, resync = 0, False
            while seq < total:
                try:
                    if resync:  # a failed append may have been applied before the reply was lost
                        seq, resync = (await j.head(CID)).seq, False
                        continue
                    await j.append(CID, [env(seq + 1)], str(seq + 1))
                    seq += 1
                except (JournalUnavailable, JournalConflict):
                    failures += 1
                    resync = True
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.001)

        writer = asyncio.create_task(write())
        await wait_for(lambda: len(seen) >= 100, what="first deliveries")
        await asyncio.to_thread(server.restart, kill=True)  # SIGKILL mid-stream; AOF fsync always
        async with asyncio.timeout(10):
            await writer
        await wait_for(lambda: tailer.last_seq == total, what="tail to catch up")
        await stop(tail)
        await reader.aclose()
        assert seen == list(range(1, total + 1))  # no gap, no duplicate
        assert failures >= 1 and tailer.gaps == 0

    run(t, server.url)


def test_tailer_reports_a_trimmed_gap_and_delivers_what_exists(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        j = journal(c, max_events=5)
        await j.append(CID, [env(s) for s in range(1, 11)], None)
        seen: list[int] = []
        reader = tail_client(redis_url)
        tailer = JournalTailer(reader, j, CID, lambda envs: seen.extend(e.seq for e in envs), 2)
        tail = asyncio.create_task(tailer.run())
        await wait_for(lambda: seen == [6, 7, 8, 9, 10], what="delivery")
        await stop(tail)
        await reader.aclose()
        assert tailer.gaps == 1

    run(t, redis_url)


def test_tailer_stops_promptly_when_cancelled_at_any_point(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        for delay in (0, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.02):
            fresh = tail_client(redis_url)  # cancels racing connection setup too
            tailer = JournalTailer(fresh, journal(fresh), CID, lambda envs: None, 0, block_ms=5000)
            task = asyncio.create_task(tailer.run())
            await asyncio.sleep(delay)
            await stop(task)
            await fresh.aclose()

    run(t, redis_url)


def test_two_processes_fan_out_the_holders_appends_identically(redis_url: str) -> None:
    async def t(c: redis.asyncio.Redis) -> None:
        process_clients = [tail_client(redis_url), tail_client(redis_url)]
        journals = [journal(pc) for pc in process_clients]
        hubs = [Hub(pj, 100, 1 << 20, 1000) for pj in journals]
        tailers = [
            JournalTailer(pc, pj, CID, lambda envs, hub=hub: hub.publish(CID, envs), 0)
            for pc, pj, hub in zip(process_clients, journals, hubs, strict=True)
        ]
        subs = [(await hub.subscribe(CID, 0))[0] for hub in hubs]
        tasks = [asyncio.create_task(tailer.run()) for tailer in tailers]
        owner = uuid.uuid4().hex[:12]
        assert await Lease(process_clients[0], PREFIX, CID, owner, 5000).acquire()
        sink = ClusterSink(journals[0], owner)  # process 0 holds the lease; it does not publish itself
        for seq in range(1, 21):
            await sink.emit(CID, [env(seq)], str(seq))
        for sub in subs:
            got: list[int] = []
            async with asyncio.timeout(5):
                while len(got) < 20:
                    got += [e.seq for e in await sub.next_batch()]
            assert got == list(range(1, 21))
        for task in tasks:
            await stop(task)
        for pc in process_clients:
            await pc.aclose()

    run(t, redis_url)
