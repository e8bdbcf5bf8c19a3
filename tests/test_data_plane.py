"""The frame data plane: run actors push batches to the reader process's sink; `read` fills in.

Each test drives a real run actor on the session's Ray and a real sink in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
import ray

from rayruns.actors.client import RegistryClient
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.remote import new_run_actor
from rayruns.actors.sink import FrameSink, Subscription
from rayruns.actors.spec import RunSpec
from rayruns.actors.wire import ACK, SinkRefused, hello
from rayruns.serve_app.settings import Settings
from tests.conftest import wait_terminal

WORDS = " ".join(f"w{n}" for n in range(60))
# ~4 MB of frames: far more than a stalled reader's socket and queue hold.
BIG = " ".join("x" * 1000 for _ in range(4000))


def spec(text: str = WORDS, **options: Any) -> RunSpec:
    return RunSpec(messages=[{"role": "user", "content": text}], provider_options=options)


def client_with(registry: RegistryClient, **changes: Any) -> RegistryClient:
    """The session's registry, read through a sink of its own (its own bounds)."""
    settings = registry.settings.model_copy(update=changes)
    return RegistryClient(registry.handle, settings)


async def the_sink(client: RegistryClient) -> FrameSink:
    sink = await client.sink()
    assert sink is not None
    return sink


async def stored(client: RegistryClient, run_id: str) -> list[LoggedFrame]:
    await wait_terminal(client, run_id)
    frames = await client.stored_frames(run_id)
    assert frames is not None
    return frames


def assert_exact(got: list[LoggedFrame], log: list[LoggedFrame], after: int = 0) -> None:
    assert [f.seq_id for f in got] == list(range(after + 1, len(log) + 1))
    assert got == log[after:]


def only_subscription(sink: FrameSink) -> Subscription:
    (subscription,) = sink.subscriptions()
    return subscription


async def test_an_attached_reader_gets_frames_pushed_not_read(registry: RegistryClient) -> None:
    client = client_with(registry, sink_queue_batches=63)
    sink = await the_sink(client)
    run, actor = await client.create_run(spec(delay_s=0.005))
    got = [f async for batch in client.follow(run.id, 0, actor) for f in batch]
    assert_exact(got, await stored(client, run.id))
    # One attach carried the whole run.
    assert sink.accepted == 1 and sink.refused == 0 and sink.cut_short == 0


async def test_a_wrong_secret_is_refused_by_the_sink(registry: RegistryClient) -> None:
    sink = await the_sink(client_with(registry, sink_queue_batches=62))
    subscription = sink.subscribe()
    address = sink.address
    try:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(hello(b"\x00" * 32, subscription.id))
        assert await reader.read() == b""  # hung up, no ACK
        writer.close()
        assert sink.refused == 1 and sink.accepted == 0

        # The right secret but no such subscription: refused too.
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(hello(address.secret, "no-such-subscription"))
        assert await reader.read() == b""
        writer.close()
        assert sink.refused == 2

        # The right secret and an open subscription: accepted.
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(hello(address.secret, subscription.id))
        assert await reader.readexactly(1) == ACK
        writer.close()
        assert sink.accepted == 1
    finally:
        subscription.close()


async def test_an_actor_handed_a_wrong_secret_is_refused_and_the_reader_reads(
    registry: RegistryClient,
) -> None:
    client = client_with(registry, sink_queue_batches=61)
    sink = await the_sink(client)
    run, actor = await client.create_run(spec(hang_after=5))
    subscription = sink.subscribe()
    wrong = dataclasses.replace(sink.address, secret=b"\x01" * 32)
    with pytest.raises(SinkRefused):
        await actor.attach.remote(run.id, wrong, subscription.id, 0)
    subscription.close()
    assert sink.refused == 1 and sink.accepted == 0

    # A reader whose sink refuses the actor still gets every frame, by `read`.
    sink.address = wrong
    reader = client.follow(run.id, 0, actor)
    got: list[LoggedFrame] = []
    while len(got) < 5:
        got += await anext(reader)
    assert sink.refused == 2 and sink.accepted == 0
    await client.cancel(run.id)
    got += [f async for batch in reader for f in batch]
    assert_exact(got, await stored(client, run.id))


async def test_gaps_and_duplicates_on_the_socket_are_caught_by_seq(
    registry: RegistryClient,
) -> None:
    client = client_with(registry, sink_queue_batches=60)
    sink = await the_sink(client)
    run, actor = await client.create_run(spec(delay_s=0.02))
    reader = client.follow(run.id, 0, actor)
    got = list(await anext(reader))
    subscription = only_subscription(sink)
    forged = '{"forged": true}'
    subscription.deliver(([LoggedFrame(1, "assistant_message", forged)], False))  # duplicate
    subscription.deliver(([LoggedFrame(got[-1].seq_id + 50, "assistant_message", forged)], False))
    got += [f async for batch in reader for f in batch]
    assert_exact(got, await stored(client, run.id))
    assert sink.accepted >= 2, "after the gap is read, the reader attaches again"


async def test_a_dropped_socket_falls_back_to_read_then_reattaches(
    registry: RegistryClient,
) -> None:
    client = client_with(registry, sink_queue_batches=59)
    sink = await the_sink(client)
    run, actor = await client.create_run(spec(delay_s=0.03))
    reader = client.follow(run.id, 0, actor)
    got: list[LoggedFrame] = []
    for _ in range(6):
        got += await anext(reader)
        for subscription in sink.subscriptions():  # none while the reader is on `read`
            subscription.hang_up()
    got += [f async for batch in reader for f in batch]
    assert_exact(got, await stored(client, run.id))
    assert sink.accepted >= 2


async def test_an_actor_killed_mid_push_gives_every_reader_the_terminal_frames(
    registry: RegistryClient,
) -> None:
    client = client_with(registry, sink_queue_batches=58)
    sink = await the_sink(client)
    run, actor = await client.create_run(spec(hang_after=4))
    readers = [client.follow(run.id, 0, actor) for _ in range(3)]
    seen: list[list[LoggedFrame]] = [[] for _ in readers]
    for reader, got in zip(readers, seen, strict=True):
        while len(got) < 4:
            got += await anext(reader)
    assert len(sink.subscriptions()) == 3 and sink.accepted == 3
    ray.kill(actor, no_restart=True)
    for reader, got in zip(readers, seen, strict=True):
        got += [f async for batch in reader for f in batch]
        assert [f.message_type for f in got[-3:]] == ["error", "stop_reason", "usage_statistics"]
        assert [f.seq_id for f in got] == list(range(1, len(got) + 1))
        assert got == seen[0]
    lost = await wait_terminal(client, run.id)
    assert lost.status == "failed" and lost.error is not None
    assert lost.error.error_type == "run_lost"


async def test_a_stalled_reader_delays_neither_other_readers_nor_the_pump(
    registry: RegistryClient,
) -> None:
    client = client_with(registry, sink_buffer_bytes=64 * 1024, sink_queue_batches=2)
    # The other reader's own sink asks for room for the whole run: it is never dropped.
    roomy = client_with(registry, sink_buffer_bytes=64 * 1024 * 1024, sink_queue_batches=4096)
    last = len(BIG.split())  # the provider goes silent before its last chunk
    run, actor = await client.create_run(spec(BIG, delay_s=0.0, hang_after=last - 1))
    try:
        stalled = client.follow(run.id, 0, actor)
        first = list(await anext(stalled))  # ... and then it takes nothing for a while

        other = roomy.follow(run.id, 0, actor)
        got: list[LoggedFrame] = []
        while not got or got[-1].seq_id < last - 1:  # the pump got this far, and this reader
            got += await anext(other)
        counts = await actor.subscriptions.remote()
        assert counts["attached"] == 1 and counts["dropped"] >= 1, counts
    finally:
        await client.cancel(run.id)
    got += [f async for batch in other for f in batch]
    log = await stored(client, run.id)
    assert_exact(got, log)
    rest = [f async for batch in stalled for f in batch]
    assert_exact(first + rest, log)


async def test_reset_drops_the_subscriptions_of_the_last_run(
    registry: RegistryClient, settings: Settings
) -> None:
    client = client_with(registry, sink_buffer_bytes=64 * 1024 * 1024, sink_queue_batches=2)
    sink = await the_sink(client)
    actor = new_run_actor(f"test-reset-{uuid.uuid4().hex}", settings.actors, settings.providers)
    try:
        run_id = f"run-{uuid.uuid4().hex}"
        await actor.start.remote(run_id, spec(BIG, delay_s=0.0))
        subscription = sink.subscribe()
        await actor.attach.remote(run_id, sink.address, subscription.id, 0)
        # The reader takes nothing: the whole log cannot fit its socket, so the actor still
        # holds unsent bytes for it once the run is over.
        finished = await actor.result.remote(run_id)
        assert (await actor.subscriptions.remote())["attached"] == 1
        await actor.reset.remote()
        assert (await actor.subscriptions.remote())["attached"] == 0

        got: list[LoggedFrame] = []
        while (batch := await subscription.next()) is not None:
            frames, closed = batch
            assert not closed, "the closing batch was dropped with the subscription"
            got += frames
        assert got == finished.frames[: len(got)] and len(got) < len(finished.frames)
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("transport", ["push", "read"])
async def test_resume_from_every_cursor_mid_run_is_exact(
    registry: RegistryClient, transport: str
) -> None:
    client = client_with(registry, frame_transport=transport, sink_queue_batches=57)
    run, actor = await client.create_run(spec(hang_after=8))
    cursors = range(9)

    async def follow_from(cursor: int) -> list[LoggedFrame]:
        got: list[LoggedFrame] = []
        async for batch in client.follow(run.id, cursor, actor):
            got += batch
            if got[-1].seq_id == 8:
                await reached.put(cursor)
        return got

    reached: asyncio.Queue[int] = asyncio.Queue()
    readers = [asyncio.create_task(follow_from(c)) for c in cursors[:-1]]
    for _ in cursors[:-1]:
        await reached.get()  # every reader is at the silent provider's last frame
    late = asyncio.create_task(follow_from(8))  # from the live end: nothing until the cancel
    await client.cancel(run.id)
    log = await stored(client, run.id)
    for cursor, got in zip(cursors, await asyncio.gather(*readers, late), strict=True):
        assert_exact(got, log, cursor)


async def test_an_actor_on_another_node_pushes_over_tcp(registry: RegistryClient) -> None:
    client = client_with(registry, sink_queue_batches=56)
    sink = await the_sink(client)
    # The sink's Unix socket is reachable only from its own node: an actor that is told the
    # sink lives on another node must take TCP to the node's address.
    sink.address = dataclasses.replace(sink.address, node_id="another-node", unix_path=None)
    run, actor = await client.create_run(spec(delay_s=0.005))
    got = [f async for batch in client.follow(run.id, 0, actor) for f in batch]
    assert_exact(got, await stored(client, run.id))
    assert sink.accepted == 1 and sink.refused == 0 and sink.cut_short == 0
