"""The verify / serve / inspect / merge commands: exit codes, messages and help text."""

import pytest
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.schema import Manifest

runner = CliRunner()


def test_verify_exit_codes_name_bad_shards(shardset):
    ok = runner.invoke(app, ["verify", str(shardset), "--quiet"])
    assert ok.exit_code == 0 and "OK: 3 shards, 6 samples" in ok.output
    (shardset / Manifest.load(shardset).shards[2].name).unlink()
    bad = runner.invoke(app, ["verify", str(shardset), "--quiet"])
    assert bad.exit_code == 1 and "missing: train-000002.tar" in bad.output
    gone = runner.invoke(app, ["verify", str(shardset / "nope")])
    assert gone.exit_code == 2 and "nope" in gone.output


def test_inspect_prints_summary_and_writes_sheet(shardset, tmp_path):
    out = tmp_path / "sheet.png"
    res = runner.invoke(app, ["inspect", str(shardset), "--sheet", str(out), "--samples", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "moving" in res.output and "64x48" in res.output and out.stat().st_size > 1000
    res = runner.invoke(app, ["inspect", str(shardset), "--reconstruct", "ckpt.pt"])
    assert res.exit_code == 2 and "--sheet" in res.output


def test_merge_refusal_is_an_error_message(tmp_path, clips, build_shardset):
    build_shardset(tmp_path / "a", clips[:2], settings={"crf": 23})
    build_shardset(tmp_path / "b", clips[2:4], settings={"crf": 28})
    res = runner.invoke(app, ["merge", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "m")])
    assert res.exit_code == 2 and "crf" in res.output
    res = runner.invoke(app, ["merge", str(tmp_path / "a"), str(tmp_path / "m"), "--quiet"])
    assert res.exit_code == 0 and "2 samples" in res.output


@pytest.mark.parametrize("command,options", [
    ("verify", ["--deep", "--quiet"]),
    ("serve", ["--host", "--port", "--max-connections", "--idle-timeout"]),
    ("inspect", ["--sheet", "--samples", "--frames", "--reconstruct"]),
    ("merge", ["--copy", "--prefix"]),
])
def test_help_documents_every_option(command, options):
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0
    for opt in options:
        assert opt in res.output
    assert "127.0.0.1" in runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
