"""``vidshard copy``: verified, manifest last, resumable after a kill (object storage: test_storage.py)."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.copy import CopyConfig, copy_set
from vidshard.shards.schema import MANIFEST, Manifest
from vidshard.shards.verify import VerifyConfig, verify

runner = CliRunner()


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, clips, build_shardset) -> Path:
    """The six test clips, one shard each (six shards)."""
    folder = tmp_path_factory.mktemp("many") / "set"
    build_shardset(folder, clips, max_bytes=1)
    assert len(Manifest.load(folder).shards) == 6
    return folder


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; every shard takes ``delay`` seconds, so a copy can be killed half-way."""

    delay = 0.0
    requested: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.endswith(".tar"):
            type(self).requested.append(self.path.rsplit("/", 1)[-1])
            time.sleep(self.delay)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server(many_shards):
    handler = type("Handler", (_SlowHandler,), {"delay": 0.4, "requested": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(handler, directory=str(many_shards)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_copy_checks_every_shard_and_writes_the_manifest_last(shardset, tmp_path):
    bad = Manifest.load(shardset).shards[1].name
    good_bytes = (shardset / bad).read_bytes()
    data = bytearray(good_bytes)
    data[700] ^= 0xFF  # same size, one flipped byte: only the sha256 can tell
    (shardset / bad).write_bytes(bytes(data))
    dest = tmp_path / "copy"
    result = copy_set(CopyConfig(source=str(shardset), dest=str(dest), progress=False, attempts=2))
    assert [name for name, _ in result.failed] == [bad] and "sha256" in result.failed[0][1]
    assert not result.manifest_written and not (dest / MANIFEST).exists()  # no half-copied set is visible
    assert not (dest / bad).exists() and len(result.copied) == 2
    (shardset / bad).write_bytes(good_bytes)  # the source repaired: run again
    again = copy_set(CopyConfig(source=str(shardset), dest=str(dest), progress=False))
    assert again.ok and again.copied == [bad] and len(again.kept) == 2
    assert verify(VerifyConfig(location=str(dest), progress=False)).ok
    assert (dest / "failures.jsonl").read_bytes() == (shardset / "failures.jsonl").read_bytes()


def test_copy_resumes_after_a_kill(many_shards, slow_server, tmp_path):
    handler, url = slow_server
    dest = tmp_path / "dest"
    cmd = [sys.executable, "-m", "vidshard.cli", "copy", url, str(dest), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # until two shards are in place (bounded: 60 s)
            if len(list(dest.glob("train-*.tar"))) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    done = sorted(p.name for p in dest.glob("train-*.tar"))
    assert 2 <= len(done) < 6 and not (dest / MANIFEST).exists()
    handler.requested.clear()
    result = copy_set(CopyConfig(source=url, dest=str(dest), progress=False))
    assert result.ok and sorted(result.kept) == done and len(result.copied) == 6 - len(done)
    assert not set(handler.requested) & set(done)  # finished shards are not fetched again
    assert verify(VerifyConfig(location=str(dest), progress=False)).ok
    assert not list(dest.glob(".*.part"))


def test_copy_refuses_a_destination_holding_another_set(shardset, many_shards, tmp_path):
    res = runner.invoke(app, ["copy", str(shardset), str(many_shards), "--quiet"])
    assert res.exit_code == 2 and "another shard set" in res.output
    res = runner.invoke(app, ["copy", str(shardset), "http://127.0.0.1:1/set/"])
    assert res.exit_code == 2 and "cannot write to http" in res.output
    res = runner.invoke(app, ["copy", str(shardset), str(shardset)])
    assert res.exit_code == 2 and "source itself" in res.output
    res = runner.invoke(app, ["copy", str(shardset), str(tmp_path / "ok"), "--quiet"])
    assert res.exit_code == 0 and "3 shards copied" in res.output and "manifest.json written" in res.output


def test_copy_help_documents_every_option():
    res = runner.invoke(app, ["copy", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0
    for opt in ("--workers", "--attempts", "--quiet", "s3://"):
        assert opt in res.output
