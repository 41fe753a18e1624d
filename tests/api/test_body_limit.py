"""Request bodies over the limit get a 413 in OpenAI's envelope before they are read.

The 100 MB bodies are sent for real over loopback from a socket (one 1 MiB buffer reused), to
a server in this process, so this process's peak RSS is the server's memory for the body.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from infermeter.api.body_limit import DEFAULT_MAX_BODY_BYTES
from infermeter.cli.main import build_parser
from infermeter.config import load_settings
from infermeter.core.errors import ConfigError
from tests.conftest import LiveServer, fake_service

MiB = 1024 * 1024
HUNDRED_MB = 100 * MiB
CHAT = "/v1/chat/completions"


def peak_rss_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))  # type: ignore[union-attr]


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def raw_post(live: LiveServer, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """POST ``chunks`` as the body from a plain socket; (the server's response, bytes it took).

    A sender thread pushes the body while this thread reads; the server may hang up mid-body.
    """
    host, port = live.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = f"POST {CHAT} HTTP/1.1\r\nhost: {host}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sent = [0]

    def push() -> None:
        try:
            sock.sendall(head.encode())
            for chunk in chunks:
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:  # the server closed the connection: what it refused was never read
            pass

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    response = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            response += data
            if b"\r\n\r\n" in response:
                head_part, _, body = response.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head_part, re.IGNORECASE)
                if length and len(body) >= int(length.group(1)):
                    break
    except ConnectionResetError:
        pass
    finally:
        sock.close()
        sender.join(60)
    return response, sent[0]


def parse(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def body_of(size: int) -> Iterator[bytes]:
    block = b"x" * MiB
    for start in range(0, size, MiB):
        yield block[: min(MiB, size - start)]


def chunked(size: int) -> Iterator[bytes]:
    for part in body_of(size):
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def assert_413(response: bytes, limit: int) -> dict[str, object]:
    status, headers, body = parse(response)
    assert status == 413, response[:500]
    assert headers["content-type"] == "application/json"
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    message = str(error["message"])
    assert f"{limit:,} bytes" in message
    assert "--max-body-bytes" in message and "INFERMETER_MAX_BODY_BYTES" in message
    return error


@pytest.fixture
def small_limit(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    return server_factory(fake_service(tmp_path / "small", max_body_bytes=4096))


def test_the_default_limit_is_one_mebibyte() -> None:
    """Without a setting, bodies up to 1 MiB are accepted."""
    assert load_settings(env={}).max_body_bytes == DEFAULT_MAX_BODY_BYTES == MiB


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_100_mb_body_is_refused_without_being_read(fake_server: LiveServer, framing: str) -> None:
    """100 MB, declared or chunked: a 413 naming the limit, and the server's memory stays flat."""
    auth = {"authorization": f"Bearer {fake_server.keys['alpha']}", "content-type": "application/json"}
    if framing == "content-length":
        headers, chunks = {**auth, "content-length": str(HUNDRED_MB)}, body_of(HUNDRED_MB)
    else:
        headers, chunks = {**auth, "transfer-encoding": "chunked"}, chunked(HUNDRED_MB)
    reset_peak_rss()
    before = peak_rss_kib()
    response, taken = raw_post(fake_server, headers, chunks)
    grown_mib = (peak_rss_kib() - before) / 1024
    error = assert_413(response, MiB)
    assert ("Content-Length is 104,857,600 bytes" in str(error["message"])) == (framing == "content-length")
    assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB while refusing the body"
    assert taken < HUNDRED_MB // 2, f"the server read {taken:,} bytes of a body it refused"
    assert httpx.get(fake_server.url + "/healthz", timeout=30).status_code == 200


def test_a_body_at_the_limit_is_served_and_one_byte_more_is_not(small_limit: LiveServer) -> None:
    """With max_body_bytes=4096: exactly 4,096 bytes reach the API; 4,097 get the 413."""
    auth = {"authorization": f"Bearer {small_limit.keys['alpha']}", "content-type": "application/json"}
    base = {"model": "tiny-gpt", "max_tokens": 1, "messages": [{"role": "user", "content": ""}]}
    padding = 4096 - len(json.dumps(base))
    at_limit = json.dumps({**base, "messages": [{"role": "user", "content": "y" * padding}]}).encode()
    assert len(at_limit) == 4096
    resp = httpx.post(small_limit.url + CHAT, content=at_limit, headers=auth, timeout=30)
    assert resp.status_code != 413, resp.text
    over = at_limit[:-1] + b" }"
    resp = httpx.post(small_limit.url + CHAT, content=over, headers=auth, timeout=30)
    assert resp.status_code == 413 and "4,096 bytes" in resp.json()["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused_on_any_route(small_limit: LiveServer) -> None:
    """The count applies while reading, whatever the route (here the admin corrections)."""
    auth = {"authorization": f"Bearer {small_limit.admin_key}", "content-type": "application/json"}

    def body() -> Iterator[bytes]:
        yield b'{"record_id": "' + b"r" * 8000 + b'", "kind": "credit", "reason": "x"}'

    resp = httpx.post(small_limit.url + "/v1/admin/corrections", content=body(), headers=auth, timeout=30)
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["code"] == "request_too_large"


def test_streaming_responses_pass_through_the_limit(small_limit: LiveServer) -> None:
    """The middleware is pure ASGI: server-sent events still arrive as a stream."""
    stream = small_limit.client("alpha").chat.completions.create(
        model="tiny-gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert sum(1 for _ in stream) >= 3


def test_the_limit_is_a_setting_a_flag_and_an_environment_variable() -> None:
    """--max-body-bytes and INFERMETER_MAX_BODY_BYTES set it; a value under 1 is a config error."""
    args = build_parser().parse_args(["serve", "--max-body-bytes", "2048"])
    assert args.max_body_bytes == 2048
    assert load_settings({"max_body_bytes": args.max_body_bytes}, env={}).max_body_bytes == 2048
    assert load_settings(env={"INFERMETER_MAX_BODY_BYTES": "65536"}).max_body_bytes == 65536
    with pytest.raises(ConfigError, match="max_body_bytes=0 must be >= 1"):
        load_settings(env={"INFERMETER_MAX_BODY_BYTES": "0"})
