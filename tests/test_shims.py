"""The private APIs of dependencies amic relies on, each behind its shim module, still
behave as the shim expects.  A failure here names the dependency and its version: an
upgrade changed an internal, and the shim (only it) must follow."""

from __future__ import annotations

import asyncio
import gzip
import importlib.metadata
import inspect
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import aiomqtt
import paho.mqtt.client as paho_mqtt
import pytest
from construct import Bytes, Int8ub, Struct, this
from influxdb_client import InfluxDBClient  # type: ignore[attr-defined]
from influxdb_client.client.write_api import SYNCHRONOUS

from collector.forward._shim_influxdb import pass_gzipped_bodies
from drivers._shim_aiomqtt import (
    connect_future,
    fail_fast_before_connack,
    paho_client,
    watch_connack,
)
from protocols._shim_construct import fast_parser
from protocols.dlt645 import _frame


def upstream(dist: str) -> str:
    return f"{dist} {importlib.metadata.version(dist)} changed (see its shim module)"


# ---- aiomqtt: drivers/_shim_aiomqtt.py ---------------------------------------------------

async def test_aiomqtt_client_internals_are_there() -> None:
    client = aiomqtt.Client("127.0.0.1", 1883)
    paho = paho_client(client)
    assert isinstance(paho, paho_mqtt.Client), upstream("aiomqtt")
    found = connect_future(client)
    assert found is not None, upstream("aiomqtt")
    assert found[1] is asyncio.get_running_loop(), upstream("aiomqtt")
    # Its own callbacks, which the shim wraps (and calls on).
    assert getattr(paho.on_connect, "__self__", None) is client, upstream("aiomqtt")
    assert getattr(paho.on_disconnect, "__self__", None) is client, upstream("aiomqtt")
    # What the wrapped on_connect reads from its third argument.
    assert "session_present" in getattr(paho_mqtt.ConnectFlags, "_fields", ()), \
        upstream("paho-mqtt")


async def _broker(handle: object) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def test_aiomqtt_connection_closed_before_connack_fails_at_once() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the CONNECT has begun: then hang up, as a TLS refusal does
        writer.close()

    server, port = await _broker(close_at_once)
    async with server:
        client = aiomqtt.Client("127.0.0.1", port, timeout=10)
        fail_fast_before_connack(client)
        t0 = time.monotonic()
        with pytest.raises(aiomqtt.MqttError, match="before accepting it"):
            await client.__aenter__()
        assert time.monotonic() - t0 < 5, upstream("aiomqtt")


async def test_aiomqtt_connack_session_present_is_seen() -> None:
    async def connack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(2)  # CONNECT: type, remaining length (< 128)
        await reader.readexactly(header[1])
        writer.write(bytes([0x20, 0x02, 0x01, 0x00]))  # CONNACK: session present, accepted
        await writer.drain()
        await reader.read()  # until the client's DISCONNECT and close
        writer.close()

    server, port = await _broker(connack)
    async with server:
        client = aiomqtt.Client("127.0.0.1", port, identifier="shim", clean_session=False,
                                timeout=5)
        flags: list[bool] = []
        watch_connack(client, flags)
        async with client:
            pass
        assert flags == [True], upstream("aiomqtt")


# ---- influxdb-client: collector/forward/_shim_influxdb.py ----------------------------------------

class _Capture(BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((self.headers.get("Content-Encoding", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    _Capture.got = []
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_influxdb_body_hook_sends_gzipped_bodies_as_they_are(http_url: str) -> None:
    from influxdb_client.configuration import Configuration

    assert list(inspect.signature(Configuration.update_request_body).parameters) == \
        ["self", "path", "body"], upstream("influxdb-client")
    ours = gzip.compress(b"m v=1 1\n", compresslevel=1)
    with InfluxDBClient(url=http_url, token="t", org="o", enable_gzip=True) as client:
        pass_gzipped_bodies(client)
        w = client.write_api(write_options=SYNCHRONOUS)
        w.write(bucket="b", record=ours)
        w.write(bucket="b", record=b"m v=2 2\n")  # not gzipped: the client's own gzip
    assert _Capture.got[0] == ("gzip", ours), upstream("influxdb-client")
    encoding, body = _Capture.got[1]
    assert encoding == "gzip" and gzip.decompress(body) == b"m v=2 2\n", \
        upstream("influxdb-client")


# ---- construct: protocols/_shim_construct.py ---------------------------------------------

def test_construct_compiled_parse_function_with_a_shared_context() -> None:
    layout = Struct("length" / Int8ub, "data" / Bytes(this.length), "tail" / Int8ub)
    compiled = layout.compile()
    assert callable(getattr(compiled, "parsefunc", None)), upstream("construct")
    assert len(inspect.signature(compiled.parsefunc).parameters) == 2, upstream("construct")
    parse = fast_parser(compiled)
    for raw in (b"\x00\x07", b"\x03abc\x09", b"\x01z\xff"):
        plain = {k: v for k, v in layout.parse(raw).items() if k != "_io"}
        assert dict(parse(raw)) == plain, upstream("construct")
    # The DL/T645 frame parser (its hot path) agrees with the plain one.
    frame = _frame.build_frame(_frame.Frame("000000000001", 0x91, b"\x01\x02\x03\x04"))
    assert _frame.parse_frame(frame) == _frame.parse_frame(frame, compiled=False)
