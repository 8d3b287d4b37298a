import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vidshard.shards.schema import Manifest
from vidshard.shards.serve import ServeConfig, make_shard_server, url_of


@pytest.fixture
def served(shardset: Path) -> Iterator[tuple[Path, int]]:
    srv = make_shard_server(ServeConfig(shardset=shardset, port=0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield shardset, srv.server_port
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def request(port: int, path: str, method: str = "GET", headers: dict | None = None):
    """A raw request: http.client sends the path exactly as given (no normalisation of '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_binds_loopback_by_default(pristine_set):
    srv = make_shard_server(ServeConfig(shardset=pristine_set, port=0))
    try:
        assert srv.host == "127.0.0.1"
        assert url_of(srv) == f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.server_close()


def test_serves_manifest_and_whole_shards(served):
    folder, port = served
    status, headers, body = request(port, "/manifest.json")
    assert status == 200 and Manifest.from_json(body).to_dict() == Manifest.load(folder).to_dict()
    shard = Manifest.load(folder).shards[0]
    status, headers, body = request(port, f"/{shard.name}")
    assert status == 200
    assert int(headers["Content-Length"]) == shard.bytes == len(body)
    assert body == (folder / shard.name).read_bytes()
    status, headers, body = request(port, f"/{shard.name}", method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == shard.bytes and body == b""


def test_range_request_returns_206_with_exact_bytes(served):
    folder, port = served
    shard = Manifest.load(folder).shards[-1]
    data = (folder / shard.name).read_bytes()
    status, headers, body = request(port, f"/{shard.name}", headers={"Range": "bytes=100-611"})
    assert status == 206
    assert body == data[100:612] and int(headers["Content-Length"]) == 512
    assert headers["Content-Range"] == f"bytes 100-611/{len(data)}"
    status, headers, body = request(port, f"/{shard.name}", headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, _ = request(port, f"/{shard.name}", headers={"Range": f"bytes={len(data) + 5}-"})
    assert status == 416


@pytest.mark.parametrize("path", [
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
    "//etc/passwd",
    "/etc/passwd",
    "/",
    "/.train-000000.tar.tmp",
    "/train-000099.tar",
    "/manifest.json/../manifest.json",
])
def test_nothing_outside_the_whitelist_is_reachable(served, path):
    folder, port = served
    (folder.parent / "secret.txt").write_text("top secret")  # a sibling of the set
    status, _, body = request(port, path)
    assert status == 404
    assert b"root:" not in body and b"top secret" not in body and b"train-000000" not in body
    assert request(port, "/../secret.txt")[0] == 404


def test_read_only_methods(served):
    _, port = served
    for method in ("PUT", "DELETE", "POST"):
        assert request(port, "/manifest.json", method=method)[0] == 405


def test_manifest_entry_pointing_outside_is_not_served(served):
    folder, port = served
    m = Manifest.load(folder)
    text = m.to_json().replace(m.shards[0].name, "../secret.tar")
    (folder.parent / "secret.tar").write_text("not yours")
    (folder / "manifest.json").write_text(text)
    assert request(port, "/../secret.tar")[0] == 404
    assert request(port, "/" + m.shards[1].name)[0] == 200  # the rest is still served


def test_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ServeConfig(shardset=tmp_path)


def test_whitelist_follows_a_growing_manifest(served, clips, build_shardset, tmp_path):
    folder, port = served
    bigger = build_shardset(tmp_path / "bigger", clips + clips[:1], max_bytes=12_000)
    extra = bigger.shards[-1]
    new_name = "train-000042.tar"
    (folder / new_name).write_bytes((tmp_path / "bigger" / extra.name).read_bytes())
    assert request(port, "/" + new_name)[0] == 404  # on disk but not (yet) in the manifest
    m = Manifest.load(folder)
    m.shards.append(type(extra)(name=new_name, samples=extra.samples, bytes=extra.bytes, sha256=extra.sha256))
    m.save(folder)
    assert request(port, "/" + new_name)[0] == 200
    (folder / "manifest.json").write_text("{broken")
    assert request(port, "/" + new_name)[0] == 200  # the last good list is kept
