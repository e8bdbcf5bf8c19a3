"""rayruns.Client and AsyncClient against the live server, and through a proxy that cuts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from rayruns import AsyncClient, Client
from rayruns.client import (
    APIConnectionError,
    AssistantMessage,
    BadRequestError,
    ConflictError,
    Frame,
    NotFoundError,
    StopReasonFrame,
    UnprocessableEntityError,
    UsageFrame,
)
from rayruns.serve_app.settings import Settings
from tests.cutting_proxy import CuttingProxy, RequestHead

WORDS = " ".join(f"w{i}" for i in range(20))
SLOW = {"delay_s": 0.2}  # a run that is still going when a test cuts it after a few frames


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def text_of(frames: Sequence[Frame]) -> str:
    return "".join(f.content for f in frames if isinstance(f, AssistantMessage))


def assert_whole(frames: Sequence[Frame], first_seq: int = 1) -> None:
    """Every frame once, in order, through stop_reason and usage_statistics."""
    assert [f.seq_id for f in frames] == list(range(first_seq, first_seq + len(frames)))
    assert isinstance(frames[-2], StopReasonFrame) and isinstance(frames[-1], UsageFrame)


def resumes(proxy: CuttingProxy, run_id: str) -> list[RequestHead]:
    return proxy.heads(lambda h: h.path.startswith(f"/v1/runs/{run_id}/stream?starting_after="))


@pytest.fixture
def proxy(base_url: str, settings: Settings) -> Iterator[CuttingProxy]:
    """The server behind a proxy of this test's own, so a cut hits only this test's streams."""
    cutter = CuttingProxy(settings.serve.port).start()
    yield cutter
    cutter.stop()


@pytest.fixture
def client(base_url: str) -> Iterator[Client]:
    with Client(base_url) as c:
        yield c


def test_importing_the_client_does_not_import_ray() -> None:
    script = (
        "import sys, rayruns.client, rayruns\n"
        "assert rayruns.Client is rayruns.client.Client\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'fastapi'))\n"
        "loaded += [m for m in sys.modules if m.startswith('rayruns.serve_app')]\n"
        "print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_a_streamed_run_yields_typed_frames_through_its_terminal_frames(client: Client) -> None:
    with client.runs.create(messages=user(WORDS), model="fake/echo") as stream:
        frames = list(stream)
    assert_whole(frames)
    assert text_of(frames) == WORDS
    assert all(f.run_id == stream.run_id for f in frames)
    assert frames[-2].stop_reason == "end_turn"  # type: ignore[union-attr]
    assert stream.reconnects == 0 and stream.last_seq_id == frames[-1].seq_id


def test_an_unstreamed_run_returns_the_finished_run(client: Client) -> None:
    done = client.runs.create(
        messages=user("a b c"), stream=False, metadata={"k": 1}, provider_options={"reasoning": "r"}
    )
    assert done.run.status == "completed" and done.run.metadata == {"k": 1}
    assert done.text == "a b c"
    assert {m.message_type for m in done.messages} == {"reasoning_message", "assistant_message"}
    assert done.usage is not None and done.usage.completion_tokens == 4


def test_get_list_cancel_and_stream_from_a_cursor(client: Client) -> None:
    conversation = f"c-{id(client)}"
    stream = client.runs.create(
        messages=user(WORDS),
        background=True,
        conversation_id=conversation,
        provider_options={"hang_after": 2},
    )
    first = [next(stream), next(stream)]
    assert client.runs.get(stream.run_id).status == "running"
    with pytest.raises(ConflictError) as busy:
        client.runs.create(messages=user("x"), conversation_id=conversation)
    assert busy.value.status_code == 409 and busy.value.run_id == stream.run_id
    cancelled = client.runs.cancel(stream.run_id)
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled"
    rest = list(stream)
    assert_whole(first + rest)
    assert rest[-2].stop_reason == "cancelled"  # type: ignore[union-attr]
    listed = client.runs.list(conversation_id=conversation)
    assert [r.id for r in listed] == [stream.run_id]
    assert stream.run_id in {r.id for r in client.runs.list(status="cancelled", limit=1000)}
    assert client.runs.list(conversation_id=conversation, status="completed") == []
    replay = list(client.runs.stream(stream.run_id, starting_after=1))
    assert replay == (first + rest)[1:]


def test_http_errors_raise_one_exception_tree(client: Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.runs.get("run-nope")
    assert missing.value.status_code == 404 and "run-nope" in missing.value.detail
    with pytest.raises(NotFoundError):
        client.runs.stream("run-nope")
    with pytest.raises(BadRequestError) as unknown:
        client.runs.create(messages=user("x"), model="nope/model")
    assert "nope" in unknown.value.detail
    with pytest.raises(UnprocessableEntityError) as invalid:
        client.runs.create(messages=user("x"), max_steps=0, stream=False)
    assert "max_steps" in invalid.value.detail
    with Client("http://127.0.0.1:9") as nowhere, pytest.raises(APIConnectionError):
        nowhere.runs.list()


def test_a_dropped_stream_resumes_from_its_last_seq_id(proxy: CuttingProxy) -> None:
    with Client(proxy.url) as client:
        stream = client.runs.create(messages=user(WORDS), background=True, provider_options=SLOW)
        frames = [next(stream) for _ in range(3)]
        assert proxy.cut("/v1/runs") == 1
        frames += list(stream)
    assert_whole(frames)
    assert text_of(frames) == WORDS
    assert stream.reconnects == 1
    (resume,) = resumes(proxy, stream.run_id)
    assert int(resume.path.rsplit("=", 1)[1]) >= 3


async def test_the_async_client_resumes_a_dropped_stream(proxy: CuttingProxy) -> None:
    async with AsyncClient(proxy.url) as client:
        stream = await client.runs.create(
            messages=user(WORDS), background=True, provider_options=SLOW
        )
        frames = [await anext(stream) for _ in range(3)]
        assert proxy.cut("/v1/runs") == 1
        frames += [f async for f in stream]
        assert_whole(frames)
        assert text_of(frames) == WORDS
        assert stream.reconnects == 1 and len(resumes(proxy, stream.run_id)) == 1
        assert (await client.runs.get(stream.run_id)).status == "completed"


async def test_a_dropped_foreground_stream_resumes_into_its_cancel(proxy: CuttingProxy) -> None:
    # The server cancels a foreground run whose client went away; the resumed stream says so.
    async with AsyncClient(proxy.url) as client:
        stream = await client.runs.create(messages=user(WORDS), provider_options={"hang_after": 3})
        frames = [await anext(stream) for _ in range(3)]
        assert proxy.cut("/v1/runs") == 1
        frames += [f async for f in stream]
    assert_whole(frames)
    assert text_of(frames) == "w0 w1 w2 "
    assert frames[-2].stop_reason == "cancelled"  # type: ignore[union-attr]


def test_resume_gives_up_after_max_retries(base_url: str, settings: Settings) -> None:
    cutter = CuttingProxy(settings.serve.port).start()
    try:
        with Client(cutter.url, max_retries=2) as client:
            stream = client.runs.create(
                messages=user(WORDS), background=True, provider_options={"hang_after": 1}
            )
            next(stream)
            cutter.stop()  # the connection drops and nothing listens there any more
            with pytest.raises(APIConnectionError, match="2 resumes"):
                next(stream)
            assert stream.reconnects == 2
    finally:
        with Client(base_url) as direct:
            assert direct.runs.cancel(stream.run_id).status == "cancelled"
