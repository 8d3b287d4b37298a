"""The loader on shard sets that lie: bad labels, huge claims, truncated shards, oversize members."""

from __future__ import annotations

import itertools
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.batches import LoaderStats, rebatch
from vidshard.shards.loader import ClipLoader, LoaderConfig, read_label
from vidshard.shards.schema import Manifest, SampleMeta, sample_members, video_id
from vidshard.shards.writer import ShardWriter

SIDE = 32


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "c.mp4"
    return synth_video(path, Synth(seconds=0.4, fps=25, width=SIDE, height=SIDE, gop=4)).read_bytes()


def member_dict(n: int, mp4: bytes, label: int = 0, **override: bytes | None) -> dict:
    """Sample ``n`` (label ``label``) with members replaced by ``override`` (``None`` removes one)."""
    meta = SampleMeta(video=f"v{n}.mp4", video_id=video_id(f"v{n}.mp4"), chunk=0, start_s=0.0, end_s=0.4,
                      frames=10, fps=25.0, width=SIDE, height=SIDE, label=label, label_name=f"c{label}")
    sample = sample_members(meta, mp4) | override
    return {k: v for k, v in sample.items() if v is not None}


def write_set(folder: Path, samples: list[dict], per_shard: int = 4, classes: int = 3) -> Manifest:
    infos = []
    for index, start in enumerate(range(0, len(samples), per_shard)):
        w = ShardWriter(folder, start_index=index)
        for s in samples[start:start + per_shard]:
            w.write(s)
        infos.append(w.close())
    manifest = Manifest(settings={}, shards=infos, classes=[f"c{i}" for i in range(classes)])
    manifest.save(folder)
    return manifest


def epoch(folder: Path, **kw) -> tuple[ClipLoader, list[dict]]:
    cfg = LoaderConfig(source=str(folder), **{**dict(frames=2, stride=1, size=16, batch_size=2, workers=0,
                                                     train=False, drop_last=False), **kw})
    loader = ClipLoader(cfg)
    return loader, list(loader)


def valid_keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]


def test_labels_outside_the_classes_are_corrupt_samples(tmp_path, mp4):
    bad = {1: {"cls": b"99999999999"}, 2: {"cls": b"-5"}, 3: {"cls": b"3"},  # 3 classes: 0..2
           5: {"cls": None, "json": json.dumps({"label": 7}).encode()},
           6: {"cls": None, "json": json.dumps({"label": True}).encode()}}
    samples = [member_dict(n, mp4, n % 3, **bad.get(n, {})) for n in range(8)]
    samples[7] = member_dict(7, mp4, 0, cls=b"-1")  # the unlabeled marker is a label, not an error
    write_set(tmp_path, samples)
    loader, batches = epoch(tmp_path)
    assert loader.stats.skipped == len(bad)
    reasons = [r for _, r in loader.stats.skipped_keys]
    assert all("label" in r for r in reasons), reasons
    assert len(valid_keys(batches)) == 8 - len(bad) and len(batches) == len(loader)
    labels = torch.cat([b["label"] for b in batches])
    assert labels.min() >= -1 and labels.max() <= 2  # a loss over 3 classes never sees an index past them


def test_read_label_rule():
    assert read_label({"cls": b" 2\n"}, 3) == 2 and read_label({"cls": b"-1"}, 3) == -1
    assert read_label({"json": b'{"video": "a"}'}, 3) == -1 and read_label({}, None) == -1
    assert read_label({"cls": b"5"}, None) == 5  # no classes named: any sane id
    for sample, classes in [({"cls": b"3"}, 3), ({"cls": b"-2"}, 3), ({"cls": str(2**40).encode()}, None),
                            ({"json": b'{"label": 1.0}'}, 3), ({"json": b'{"label": "1"}'}, 3)]:
        with pytest.raises(ValueError, match="label"):
            read_label(sample, classes)


class _AllocationGuard(TorchFunctionMode):
    """Records the largest tensor any torch call returns; refuses a factory call asking for more than
    ``limit`` elements before it runs (so a broken rebatch fails here instead of exhausting memory)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.arange, torch.zeros, torch.ones, torch.empty, torch.full):
            asked = [a for a in args if isinstance(a, int)] + [n for a in args if isinstance(a, (tuple, list))
                                                               for n in a if isinstance(n, int)]
            if asked and max(asked) > self.limit:
                raise MemoryError(f"{func.__name__}{tuple(args)} asks for more than {self.limit} elements")
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.largest = max(self.largest, out.numel())
        return out


def _pieces(sizes: list[int]) -> list[dict]:
    out, start = [], 0
    for n in sizes:
        out.append({"video": torch.arange(start, start + n).view(n, 1),  # (B, 1)
                    "label": torch.zeros(n, dtype=torch.int64), "key": [f"k{start + i}" for i in range(n)],
                    "valid": torch.ones(n, dtype=torch.bool)})
        start += n
    return out


def test_padding_is_made_batch_by_batch():
    # A manifest claiming 10**12 samples: the padding must not be made up front.
    stats = LoaderStats()
    with _AllocationGuard(limit=10**6) as guard:
        first = list(itertools.islice(rebatch(iter(_pieces([3, 2])), 4, 10**12, True, stats), 4))
    assert [len(b["key"]) for b in first] == [4, 4, 4, 4] and stats.padded == 10**12 - 5
    assert [b["valid"].tolist() for b in first[:2]] == [[True] * 4, [True, False, False, False]]
    assert guard.largest <= 8
    # A whole epoch with a shortfall of 4,000 clips: no tensor larger than about a batch, ever.
    stats = LoaderStats()
    with _AllocationGuard(limit=10**6) as guard:
        out = list(rebatch(iter(_pieces([3, 3])), 4, 4_006, False, stats))
    assert sum(len(b["key"]) for b in out) == 4_006 and len(out) == 1002 and stats.padded == 4_000
    assert int(sum(b["valid"].sum() for b in out)) == 6
    assert [b["video"].flatten().tolist() for b in out[1:3]] == [[4, 5, 4, 5]] * 2  # the last clips, repeated
    assert guard.largest <= 8


def test_manifest_claiming_more_samples_than_its_bytes_is_refused(tmp_path, mp4):
    write_set(tmp_path, [member_dict(n, mp4) for n in range(4)])
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["shards"][0]["samples"] = 10**12
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"shards\[0\]: 1000000000000 samples cannot fit"):
        ClipLoader(LoaderConfig(source=str(tmp_path)))
    raw["shards"][0]["bytes"] = 10**15  # consistent lies: only the bytes on disk tell
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"train-000000.tar claims 1000000000000 samples in \d+ bytes"):
        ClipLoader(LoaderConfig(source=str(tmp_path)))


def test_truncated_and_missing_shards_report_their_shortfall(tmp_path, mp4):
    m = write_set(tmp_path, [member_dict(n, mp4) for n in range(12)])  # 3 shards of 4
    shard = tmp_path / m.shards[0].name
    with tarfile.open(shard) as tar:
        third = [t for t in tar.getmembers() if t.name.startswith(video_id("v2.mp4"))][0]
    with open(shard, "r+b") as f:
        f.truncate(third.offset)  # cut at the header of sample 2's first member: tar sees a clean end
    (tmp_path / m.shards[2].name).unlink()
    loader, batches = epoch(tmp_path)
    assert len(batches) == len(loader) and len(valid_keys(batches)) == 2 + 4
    assert loader.stats.missing == 2 + 4
    shortfalls = dict(loader.stats.shortfalls)
    assert set(shortfalls) == {m.shards[0].name, m.shards[2].name}
    assert "2 of its samples" in shortfalls[m.shards[0].name]
    assert "FileNotFoundError" in shortfalls[m.shards[2].name]


def test_oversize_member_is_a_corrupt_sample_and_never_read(tmp_path, mp4):
    big = b'{"pad": "' + b"x" * (4 << 20) + b'"}'  # valid JSON, 4 MiB: over the 1 MiB cap for .json
    write_set(tmp_path, [member_dict(n, mp4, json=big) if n == 1 else member_dict(n, mp4) for n in range(4)])
    tracemalloc.start()
    try:
        loader, batches = epoch(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loader.stats.skipped == 1 and "oversize member" in loader.stats.skipped_keys[0][1]
    assert len(valid_keys(batches)) == 3
    assert peak < (2 << 20), peak  # the 4 MiB member was passed over, not read
