"""Issue 9, high: a shard name in a manifest must never become a command or a URL (the real CLI,
run from inside the set's folder, as the reproduction did)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.location import resolve

runner = CliRunner()
PWN = "pipe:touch pwned; cat train-000000.tar"


@pytest.mark.parametrize("where", ["manifest.json", "."])
def test_train_from_inside_the_set_never_runs_a_manifest_command(shardset, monkeypatch, where):
    """``cd set && vidshard train manifest.json`` (or ``.``) ran ``pipe:`` names from the manifest."""
    path = shardset / "manifest.json"
    d = json.loads(path.read_text())
    d["shards"][0]["name"] = PWN
    path.write_text(json.dumps(d))
    monkeypatch.chdir(shardset)
    res = runner.invoke(app, ["train", where, "--out", "run", "--steps", "1", "--batch-size", "2",
                              "--frames", "2", "--size", "32", "--workers", "0"])
    assert not (shardset / "pwned").exists()
    assert res.exit_code == 2, res.output
    assert "manifest.json: shards[0]: shard name 'pipe:touch pwned" in res.output
    assert "URL or command" in res.output


def test_local_shard_urls_are_absolute_paths(pristine_set, monkeypatch):
    monkeypatch.chdir(pristine_set)
    for loc in (".", "manifest.json"):
        urls = resolve(loc).urls
        assert all(u.startswith(str(pristine_set.resolve()) + "/") for u in urls), urls
