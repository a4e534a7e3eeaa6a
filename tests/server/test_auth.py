"""API keys: hashed storage, Bearer metadata, per-key rate and concurrency limits with RetryInfo."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import KeyFileError
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.keys import KeyStore, add_key, hash_key, load_keys
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import GatedEngine, call_fails, evaluate_request, plain_settings

INFO = tuning_pb2.GetServerInfoRequest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    plaintext = {
        "alice": add_key(path, "alice"),
        "bob": add_key(path, "bob", requests_per_minute=2),
        "carol": add_key(path, "carol", max_concurrent=1),
    }
    return path, plaintext


@pytest.fixture(scope="module")
def gated(engine: ScoringEngine) -> GatedEngine:
    gate = GatedEngine(engine)
    gate.release.set()  # open unless a test closes it
    return gate


@pytest.fixture(scope="module")
def auth_channel(gated: GatedEngine, keys: tuple[Path, dict[str, str]]) -> Iterator[grpc.Channel]:
    with (
        serve_in_background(gated, plain_settings(api_keys_file=keys[0])) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        yield channel


@pytest.fixture(scope="module")
def auth_stub(auth_channel: grpc.Channel) -> tuning_pb2_grpc.TuningStub:
    return tuning_pb2_grpc.TuningStub(auth_channel)


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_keys_file_holds_only_hashes(keys: tuple[Path, dict[str, str]]) -> None:
    path, plaintext = keys
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for key in plaintext.values():
        assert key not in text
        assert hash_key(key) in text
        assert len(key) >= 40
    assert [k.id for k in load_keys(path)] == ["alice", "bob", "carol"]
    assert json.loads(text)["keys"][1]["requests_per_minute"] == 2


def test_key_store_lookup(keys: tuple[Path, dict[str, str]]) -> None:
    path, plaintext = keys
    store = KeyStore.from_file(path)
    assert store.lookup(plaintext["bob"]).id == "bob"  # type: ignore[union-attr]
    assert store.lookup(plaintext["bob"] + "x") is None
    assert store.lookup("") is None


def test_duplicate_and_malformed_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "alice")
    with pytest.raises(KeyFileError, match="already exists"):
        add_key(path, "alice")
    with pytest.raises(KeyFileError, match="key id"):
        add_key(path, "no spaces please")
    path.write_text('{"keys": [{"id": "x", "sha256": "not-hex"}]}')
    with pytest.raises(KeyFileError, match=r"keys\[0\]"):
        load_keys(path)


def test_valid_key_is_accepted(auth_stub: tuning_pb2_grpc.TuningStub, keys) -> None:
    key = keys[1]["alice"]
    assert auth_stub.GetServerInfo(INFO, metadata=bearer(key), timeout=20).model_id
    assert auth_stub.Evaluate(evaluate_request(), metadata=bearer(key), timeout=20).num_candidates == 2


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "missing API key"),
        (bearer("cbpt_not-a-real-key-0123456789"), "invalid API key"),
        ([("authorization", "Basic YWxpY2U6c2VjcmV0")], "malformed"),
        ([("authorization", "Bearer ")], "malformed"),
    ],
)
def test_bad_or_missing_key_is_unauthenticated(auth_stub, metadata, message) -> None:
    for method, request in ((auth_stub.GetServerInfo, INFO), (auth_stub.Evaluate, evaluate_request())):
        failed = call_fails(method, request, metadata=metadata)
        assert failed.code == grpc.StatusCode.UNAUTHENTICATED
        assert message in failed.message
        assert "not-a-real-key" not in failed.message and "YWxpY2U6c2VjcmV0" not in failed.message


def test_health_stays_open_without_a_key(auth_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(auth_channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="cbpt.v1.Tuning"), timeout=20)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_rate_limit_is_resource_exhausted_with_retry_info(auth_stub, keys) -> None:
    bob = bearer(keys[1]["bob"])
    for _ in range(2):
        auth_stub.GetServerInfo(INFO, metadata=bob, timeout=20)
    failed = call_fails(auth_stub.GetServerInfo, INFO, metadata=bob)
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 requests per minute" in failed.message
    assert failed.retry_seconds is not None and 20 < failed.retry_seconds <= 30
    # Limits are per key: alice is unaffected.
    assert auth_stub.GetServerInfo(INFO, metadata=bearer(keys[1]["alice"]), timeout=20).model_id


def test_concurrency_limit_per_key(auth_stub, keys, gated: GatedEngine) -> None:
    carol = bearer(keys[1]["carol"])
    gated.release.clear()
    gated.entered.clear()
    try:
        in_flight = auth_stub.Evaluate.future(evaluate_request(), metadata=carol, timeout=30)
        assert gated.entered.wait(10)
        failed = call_fails(auth_stub.GetServerInfo, INFO, metadata=carol)
        assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1 concurrent" in failed.message
        assert failed.retry_seconds is not None and failed.retry_seconds > 0
        # Another key is not limited by carol's calls, and the loop answers while the engine is busy.
        assert auth_stub.GetServerInfo(INFO, metadata=bearer(keys[1]["alice"]), timeout=5).model_id
    finally:
        gated.release.set()
    assert in_flight.result().num_candidates == 2
    assert auth_stub.GetServerInfo(INFO, metadata=carol, timeout=20).model_id


async def _count_to_three(request: bytes, context: grpc.aio.ServicerContext):
    from cbpt.server.logs import current_key_id

    for number in range(3):
        yield f"{current_key_id.get()}:{number}".encode()


def test_the_interceptor_guards_streaming_handlers_too(keys: tuple[Path, dict[str, str]]) -> None:
    """A streaming method of the Tuning service gets the same key check and key id as a unary one."""
    import asyncio

    from cbpt.server.front.auth import ApiKeyInterceptor
    from cbpt.server.front.keys import KeyStore

    async def scenario() -> tuple[grpc.StatusCode, list[bytes]]:
        interceptor = ApiKeyInterceptor(
            KeyStore.from_file(keys[0]), requests_per_minute=100, max_concurrent=1
        )
        server = grpc.aio.server(interceptors=[interceptor])
        handler = grpc.unary_stream_rpc_method_handler(_count_to_three)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("cbpt.v1.Tuning", {"Count": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                count = channel.unary_stream("/cbpt.v1.Tuning/Count")
                refused = count(b"")
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    async for _ in refused:
                        pass
                allowed = [part async for part in count(b"", metadata=bearer(keys[1]["carol"]))]
                again = [
                    part async for part in count(b"", metadata=bearer(keys[1]["carol"]))
                ]  # the slot was freed
            return error.value.code(), allowed + again
        finally:
            await server.stop(0)

    code, parts = asyncio.run(scenario())
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert parts == [b"carol:0", b"carol:1", b"carol:2"] * 2


def test_a_refused_call_is_answered_without_parsing_its_request(keys: tuple[Path, dict[str, str]]) -> None:
    """Finding 10 of #22: an unauthenticated call was parsed in full (up to 17 MiB) before refusal."""
    import asyncio

    from cbpt.server.front.auth import ApiKeyInterceptor
    from cbpt.server.front.keys import KeyStore

    parsed: list[int] = []

    def parse(data: bytes) -> tuning_pb2.CountTokensRequest:
        parsed.append(len(data))
        return tuning_pb2.CountTokensRequest.FromString(data)

    async def count(request: tuning_pb2.CountTokensRequest, context: grpc.aio.ServicerContext):
        return tuning_pb2.CountTokensResponse(counts=[len(t) for t in request.texts])

    async def scenario() -> grpc.StatusCode:
        interceptor = ApiKeyInterceptor(
            KeyStore.from_file(keys[0]), requests_per_minute=100, max_concurrent=4
        )
        server = grpc.aio.server(interceptors=[interceptor])
        handler = grpc.unary_unary_rpc_method_handler(
            count,
            request_deserializer=parse,
            response_serializer=tuning_pb2.CountTokensResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("cbpt.v1.Tuning", {"CountTokens": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(
                    "/cbpt.v1.Tuning/CountTokens",
                    request_serializer=tuning_pb2.CountTokensRequest.SerializeToString,
                    response_deserializer=tuning_pb2.CountTokensResponse.FromString,
                )
                big = tuning_pb2.CountTokensRequest(texts=[""] * 100_000)
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await call(big, metadata=bearer("not-a-key"))
                assert parsed == []  # refused from the metadata alone
                answer = await call(
                    tuning_pb2.CountTokensRequest(texts=["abc"]), metadata=bearer(keys[1]["alice"])
                )
                assert list(answer.counts) == [3] and len(parsed) == 1
            return error.value.code()
        finally:
            await server.stop(0)

    assert asyncio.run(scenario()) is grpc.StatusCode.UNAUTHENTICATED


def test_calls_beyond_max_concurrent_rpcs_are_refused_at_once(engine: ScoringEngine) -> None:
    """Finding 10 of #22: no ``maximum_concurrent_rpcs`` was set, so handlers in flight were unbounded."""
    gated = GatedEngine(engine)
    with (
        serve_in_background(gated, plain_settings(max_concurrent_rpcs=1)) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        try:
            in_flight = stub.Evaluate.future(evaluate_request(), timeout=30)
            assert gated.entered.wait(10)
            refused = call_fails(stub.GetServerInfo, INFO)
        finally:
            gated.release.set()
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert in_flight.result().num_candidates == 2
        assert stub.GetServerInfo(INFO, timeout=20).model_id  # one at a time, it keeps serving
