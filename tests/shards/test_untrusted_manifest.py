"""Untrusted manifests: every field is checked where it enters (schema.py), so no reader can be led
outside the set, into a command, or into a traceback by a manifest from another machine."""

from __future__ import annotations

import pytest
from vidshard.shards.schema import (
    MANIFEST,
    Manifest,
    ManifestError,
    MemberError,
    check_member_size,
    check_shard_name,
    member_max_bytes,
)

HEX = "ab" * 32
PWN = "pipe:touch pwned; cat train-000000.tar"


@pytest.mark.parametrize("name", ["train-000000.tar", "train-p01of03-000002.tar", "my_set-2-000123.tar"])
def test_shard_names_of_the_format_pass(name):
    assert check_shard_name(name) == name


@pytest.mark.parametrize("name", [
    PWN, "pipe:cat train-000000.tar", "http://evil/train-000000.tar", "file:train-000000.tar",
    "../../etc/passwd", "/etc/passwd", "../train-000000.tar", "sub/train-000000.tar", "sub\\train-000000.tar",
    "train-000000.tar\0", "train-000000.tar\n", "-rf-000000.tar", "train-0000000.tar", "train-٠٠٠٠٠٠.tar",
    "x" * 300 + "-000000.tar", "", 7, None,
])
def test_shard_names_outside_the_rule_are_refused(name):
    with pytest.raises(ManifestError, match="shard name"):
        check_shard_name(name)


def manifest_dict(**shard) -> dict:
    entry = {"name": "train-000000.tar", "samples": 2, "bytes": 20480, "sha256": HEX} | shard
    return {"format": "vidshard/1", "settings": {}, "shards": [entry]}


@pytest.mark.parametrize("change,words", [
    ({"samples": "3"}, "samples must be a non-negative integer"),
    ({"samples": True}, "samples must be"),
    ({"samples": -1}, "samples must be"),
    ({"samples": 2.0}, "samples must be"),
    ({"bytes": "20480"}, "bytes must be"),
    ({"samples": 10**12}, "cannot fit"),
    ({"sha256": "zz" * 32}, "sha256"),
    ({"sha256": HEX[:-1]}, "sha256"),
    ({"sha256": HEX.upper()}, "sha256"),
    ({"name": PWN}, "URL or command"),
    ({"extra": 1}, "exactly the fields"),
])
def test_bad_shard_entries_name_the_manifest_and_entry(change, words):
    with pytest.raises(ManifestError, match=words) as exc:
        Manifest.from_dict(manifest_dict(**change), "/x/manifest.json")
    assert str(exc.value).startswith("/x/manifest.json: shards[0]:")


@pytest.mark.parametrize("d,words", [
    ([], "must be a JSON object, not list"),
    ("vidshard/1", "must be a JSON object, not str"),
    (manifest_dict() | {"shards": {"a": 1}}, "shards must be a list"),
    (manifest_dict() | {"shards": ["train-000000.tar"]}, "shard entry must be a JSON object"),
    (manifest_dict() | {"classes": ["a", 3]}, "classes must be a list of strings"),
    (manifest_dict() | {"classes": "ab"}, "classes must be a list of strings"),
    (manifest_dict() | {"settings": []}, "settings must be a JSON object"),
    (manifest_dict() | {"totals": {"samples": "3"}}, "totals.samples"),
    (manifest_dict() | {"created": 5}, "created must be a string"),
    ({"format": "vidshard/1", "settings": {}, "shards": manifest_dict()["shards"] * 2}, "listed twice"),
])
def test_bad_manifest_values_are_manifest_errors(d, words):
    with pytest.raises(ManifestError, match=words) as exc:
        Manifest.from_dict(d, "M.json")
    assert str(exc.value).startswith("M.json: ")


def test_a_non_json_manifest_error_names_the_file(tmp_path):
    for text in (b"{not json", b"\xff\xfe", b"[" * 100_000):
        (tmp_path / MANIFEST).write_bytes(text)
        with pytest.raises(ManifestError, match="not valid JSON") as exc:
            Manifest.load(tmp_path)
        assert str(tmp_path / MANIFEST) in str(exc.value)


def test_a_valid_manifest_still_round_trips(pristine_set):
    m = Manifest.load(pristine_set)
    assert Manifest.from_json(m.to_json()).to_dict() == m.to_dict()


def test_member_caps_by_type():
    check_member_size("mp4", 100 << 20)
    check_member_size("json", 1000)
    assert member_max_bytes("json") < member_max_bytes("weird") < member_max_bytes("mp4")
    for ext, size in (("json", 200 << 20), ("cls", 1000), ("mp4", 3 << 30), ("weird", 1 << 30)):
        with pytest.raises(MemberError, match=f".{ext} member of {size} bytes"):
            check_member_size(ext, size)
