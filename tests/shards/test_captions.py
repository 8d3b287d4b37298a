"""Captions: read from KEY.json (untrusted), merged from repeated list rows, tokenised in the loader
(a sample without one skipped and counted), shown by inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vidshard.preprocess.inputs import InputError, list_inputs
from vidshard.shards.inspect import InspectConfig, inspect, summary_tables
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.schema import Manifest, SampleMeta, sample_captions, sample_members, video_id
from vidshard.shards.writer import ShardWriter
from vidshard.train.text import CaptionTokens, byte_tokenizer_json


def test_sample_captions_merges_and_validates() -> None:
    assert sample_captions({"caption": "a dog", "captions": ["a dog", " a cat ", ""]}) == ["a dog", "a cat"]
    assert sample_captions({"video": "x.mp4"}) == []
    with pytest.raises(ValueError, match="'captions' must be a list of strings"):
        sample_captions({"captions": "a dog"})
    with pytest.raises(ValueError, match="'caption' must be a string"):
        sample_captions({"caption": 3})


def test_list_rows_of_one_clip_become_one_input_with_every_caption(tmp_path: Path) -> None:
    rows = [{"path": "a.mp4", "start": 1, "end": 3, "label": "cut", "caption": "cut onion"},
            {"path": "a.mp4", "start": 1, "end": 3, "label": "cut", "caption": "slice an onion"},
            {"path": "a.mp4", "start": 1, "end": 3, "label": "cut", "caption": "cut onion"},
            {"path": "a.mp4", "start": 3, "end": 5, "caption": "wash knife"},
            {"path": "b.mp4"}]
    lst = tmp_path / "list.jsonl"
    lst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = list_inputs(lst)
    assert [(it.rel, it.start_s) for it in items] == [("a.mp4", 1.0), ("a.mp4", 3.0), ("b.mp4", None)]
    assert (items[0].caption, items[0].captions) == ("cut onion", ("cut onion", "slice an onion"))
    assert (items[1].caption, items[1].captions) == ("wash knife", ())
    assert (items[2].caption, items[2].captions) == (None, ())
    lst.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "label": "slice"}) + "\n")
    with pytest.raises(InputError, match="different labels"):
        list_inputs(lst)


@pytest.fixture(scope="module")
def captioned_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six samples of one small clip: four captioned (one with a list), one without, one malformed."""
    from vidshard.preprocess.ffmpeg import Synth, synth_video

    root = tmp_path_factory.mktemp("captions")
    spec = Synth(seconds=1.0, fps=10.0, width=64, height=48, gop=5)
    mp4 = synth_video(root / "clip.mp4", spec).read_bytes()
    extras = [{"caption": "a red box"}, {"caption": "a blue box", "captions": ["a blue box", "blue square"]},
              {}, {"caption": "a green box"}, {"captions": "not a list"}, {"caption": "a long " * 40}]
    writer, infos = ShardWriter(root / "set", max_bytes=1 << 40), []
    for i, extra in enumerate(extras):
        meta = SampleMeta(video=f"v{i}.mp4", video_id=video_id(f"v{i}.mp4"), chunk=0, start_s=0.0, end_s=1.0,
                          frames=10, fps=10.0, width=64, height=48)
        sample = sample_members(meta, mp4)
        sample["json"] = json.dumps(meta.to_dict() | extra).encode()
        infos += writer.write(sample)
    infos.append(writer.close())
    manifest = Manifest(settings={"synthetic": "captions"}, shards=[i for i in infos if i])
    manifest.totals.update(videos=6, samples=6)
    manifest.save(root / "set")
    return root / "set"


def test_loader_tokenises_captions_in_workers_and_skips_uncaptioned_samples(captioned_set: Path) -> None:
    hook = CaptionTokens(byte_tokenizer_json(), context=16, train=True)
    cfg = LoaderConfig(source=str(captioned_set), frames=4, stride=1, size=32, batch_size=2, workers=1,
                       shuffle_buffer=0, text=hook)
    loader = ClipLoader(cfg, rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for b in batches:
        assert b["text"].shape == (2, 16) and b["text"].dtype.is_floating_point is False
    texts = [t for b in batches for t, ok in zip(b["text"], b["valid"], strict=True) if ok]
    assert len(texts) == 4  # the uncaptioned and the malformed samples are skipped...
    assert loader.stats.skipped == 2  # ...and counted, each with its reason
    reasons = " ".join(r for _, r in loader.stats.skipped_keys)
    assert "no caption" in reasons and "must be a list of strings" in reasons
    _, eos, _ = hook.ids
    assert all(t[-1].item() in (eos, hook.ids[2]) for t in texts)  # the 280-byte caption was cut to fit
    assert any(t[-1].item() == eos for t in texts)


def test_a_set_without_captions_says_so(tiny_shardset: Path) -> None:
    cfg = LoaderConfig(source=str(tiny_shardset), frames=4, stride=1, size=32, batch_size=4, workers=0,
                       text=CaptionTokens(byte_tokenizer_json(), context=16))
    with pytest.raises(RuntimeError, match="no sample .* has a caption.*caption column"):
        list(ClipLoader(cfg, rank=0, world_size=1))


def test_inspect_shows_captions_in_the_summary_and_on_the_sheet(captioned_set: Path, tmp_path: Path) -> None:
    summary = inspect(InspectConfig(location=str(captioned_set), sheet=tmp_path / "sheet.png", samples=2,
                                    progress=False))
    assert (summary.captioned, summary.captions) == (4, 5)
    overview = summary_tables(summary)[0]
    rows = dict(zip(overview.columns[0]._cells, overview.columns[1]._cells, strict=True))
    assert rows["captions"].startswith("4 of 6 samples captioned, 5 captions")
    assert "a red box" in rows["captions"]
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").height > 2 * 28  # two rows with two-line titles
