"""serve against a changing folder and hostile clients: real paths checked per request, the last valid
manifest kept, connections bounded and idle ones closed, Range handled as RFC 9110 §14.2 says."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
from vidshard.shards.schema import Manifest
from vidshard.shards.serve import ServeConfig, make_shard_server


def start(folder: Path, **kw):
    srv = make_shard_server(ServeConfig(shardset=folder, port=0, **kw))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return srv, thread


def stop(srv, thread) -> None:
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


@pytest.fixture
def served(shardset):
    srv, thread = start(shardset)
    try:
        yield shardset, srv.server_port
    finally:
        stop(srv, thread)


def get(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_shard_replaced_by_a_link_out_of_the_set_is_not_served(served):
    folder, port = served
    name = Manifest.load(folder).shards[0].name
    assert get(port, "/" + name)[0] == 200
    secret = folder.parent / "secret.txt"
    secret.write_text("top secret")
    (folder / name).unlink()
    (folder / name).symlink_to(secret)
    status, _, body = get(port, "/" + name)
    assert status == 404 and b"top secret" not in body


def test_failures_linked_out_of_the_set_is_not_served(served):
    folder, port = served
    (folder.parent / "secret.txt").write_text("top secret")
    (folder / "failures.jsonl").unlink()
    (folder / "failures.jsonl").symlink_to(folder.parent / "secret.txt")
    status, _, body = get(port, "/failures.jsonl")
    assert status == 404 and b"top secret" not in body


def test_a_deleted_or_broken_manifest_keeps_the_last_valid_one(served, clips, build_shardset, tmp_path):
    folder, port = served
    m = Manifest.load(folder)
    text = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").unlink()
    assert get(port, "/" + m.shards[1].name)[0] == 200
    assert get(port, "/manifest.json")[2] == text
    (folder / "manifest.json").write_text('{"format": "vidshard/1", "shards": [{"name": "../x"}]}')
    assert get(port, "/" + m.shards[1].name)[0] == 200
    assert get(port, "/manifest.json")[2] == text
    bigger = build_shardset(tmp_path / "bigger", clips + clips[:1])  # a valid new manifest is taken up
    new = bigger.shards[-1]
    (folder / "train-000042.tar").write_bytes((tmp_path / "bigger" / new.name).read_bytes())
    m.shards.append(type(new)(name="train-000042.tar", samples=new.samples, bytes=new.bytes,
                              sha256=new.sha256))
    m.save(folder)
    assert get(port, "/train-000042.tar")[0] == 200
    assert Manifest.from_json(get(port, "/manifest.json")[2]).shards[-1].name == "train-000042.tar"


def test_half_open_connections_do_not_make_unbounded_threads(served):
    folder, port = served
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
    try:
        # accept is in order: once this one is answered, all 100 silent ones were accepted
        status, headers, _ = get(port, "/manifest.json")
        assert status == 503 and headers["Retry-After"] == "1"
        assert threading.active_count() <= before + 64 + 2
    finally:
        for s in socks:
            s.close()
    for _ in range(200):  # the slots free up as the server sees the closed connections
        status = get(port, "/manifest.json")[0]
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200


def test_idle_connections_are_closed(shardset):
    srv, thread = start(shardset, max_connections=4, idle_timeout=0.3)
    try:
        socks = [socket.create_connection(("127.0.0.1", srv.server_port), timeout=30) for _ in range(4)]
        for s in socks:
            assert s.recv(1) == b""  # the server closed it (recv would wait 30 s otherwise)
            s.close()
        assert get(srv.server_port, "/manifest.json")[0] == 200
    finally:
        stop(srv, thread)


@pytest.mark.parametrize("value", ["bytes=abc", "bytes=5-2", "items=0-5", "bytes=0-1,5-6", "bytes=-",
                                   "bytes=1-2-3", "bytes", "bytes=--1", "bytes=+1-2"])
def test_an_invalid_range_is_ignored(served, value):
    folder, port = served
    shard = Manifest.load(folder).shards[0]
    status, headers, body = get(port, "/" + shard.name, {"Range": value})
    assert status == 200 and body == (folder / shard.name).read_bytes()
    assert "Content-Range" not in headers


def test_ranges_that_are_valid(served):
    folder, port = served
    shard = Manifest.load(folder).shards[0]
    data = (folder / shard.name).read_bytes()
    n = len(data)
    for value in (f"bytes={n}-", f"bytes={n + 5}-{n + 9}", "bytes=-0"):  # valid, unsatisfiable: 416
        status, headers, _ = get(port, "/" + shard.name, {"Range": value})
        assert status == 416 and headers["Content-Range"] == f"bytes */{n}", value
    status, headers, body = get(port, "/" + shard.name, {"Range": f"bytes=-{n + 100}"})
    assert status == 206 and body == data and headers["Content-Range"] == f"bytes 0-{n - 1}/{n}"
    status, headers, body = get(port, "/" + shard.name, {"Range": f"bytes={n - 3}-{n + 100}"})
    assert status == 206 and body == data[-3:]
    status, headers, body = get(port, "/" + shard.name, {"Range": "bytes=0-9, "})  # empty list element
    assert status == 206 and body == data[:10]
