import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from vidshard.shards.inspect import InspectConfig, inspect, sheet_picks, summary_tables
from vidshard.shards.sheet import render_sheet, save_sheet


def test_summary_counts_classes_hours_resolutions(shardset):
    s = inspect(InspectConfig(location=str(shardset), progress=False))
    assert s.samples == 6 and len(s.videos) == 6
    assert s.classes == {"moving": 3, "counter": 3}
    assert s.resolutions == {"64x48": 6} and s.frame_rates == {25.0: 6}
    assert s.seconds == pytest.approx(6.0) and s.failures == 1
    console = Console(record=True, width=160)
    for t in summary_tables(s):
        console.print(t)
    text = console.export_text()
    for word in ("moving", "counter", "64x48", "0.00 h (6 s)", "failed inputs", "crf=30"):
        assert word in text


def test_sheet_shows_a_few_frames_of_spread_samples(shardset, tmp_path):
    out = tmp_path / "sheet.png"
    inspect(InspectConfig(location=str(shardset), sheet=out, samples=3, frames=4, progress=False))
    img = np.asarray(Image.open(out).convert("RGB"))
    # 3 rows of 4 tiles at least 64 px tall (48 px clips are scaled up), each under a title strip.
    assert img.shape[0] >= 3 * 64 and img.shape[1] >= 4 * 85
    assert img.std() > 20  # real picture content, not a blank canvas


def test_sheet_picks_spread_over_the_set():
    assert sheet_picks([4, 4, 4], 3) == {0, 4, 8}
    assert sheet_picks([2], 5) == {0, 1}
    assert sheet_picks([], 3) == set()


def test_render_sheet_layout_and_errors(tmp_path):
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 255
    img = render_sheet([[red, red], [red]], row_titles=["a", "b"], tile_height=32)
    assert img.size == (4 + 2 * (48 + 4), 4 + 2 * (14 + 32 + 4))
    assert img.getpixel((4 + 10, 4 + 14 + 10)) == (255, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        render_sheet([[np.zeros((8, 8), np.float32)]])
    with pytest.raises(ValueError, match="titles"):
        render_sheet([[red]], row_titles=["a", "b"])
    path = save_sheet([[red]], tmp_path / "x.jpg")
    assert Image.open(path).format == "JPEG"


def test_bad_sheet_name_is_refused():
    with pytest.raises(ValueError, match=".png"):
        InspectConfig(location="x", sheet="out.txt")


def test_broken_shard_is_counted_not_fatal(shardset):
    from vidshard.shards.schema import Manifest

    (shardset / Manifest.load(shardset).shards[0].name).unlink()
    s = inspect(InspectConfig(location=str(shardset), progress=False))
    assert s.samples == 6 - Manifest.load(shardset).shards[0].samples
    assert s.unreadable == [f"{Manifest.load(shardset).shards[0].name} (FileNotFoundError)"]
    console = Console(record=True, width=200)
    for t in summary_tables(s):
        console.print(t)
    assert "run vidshard verify" in console.export_text()


def test_hours_per_class_and_per_source(shardset):
    s = inspect(InspectConfig(location=str(shardset), progress=False))
    assert s.class_seconds == pytest.approx({"moving": 3.0, "counter": 3.0})
    assert s.source_seconds == pytest.approx({"moving": 3.0, "counter": 3.0})  # in moving/, counter/
    console = Console(record=True, width=160)
    for t in summary_tables(s):
        console.print(t)
    text = console.export_text()
    assert "sources" in text and "0.001" in text and "50%" in text


def test_source_of():
    from vidshard.shards.inspect import source_of

    assert source_of("cam1/2026-01-01/a.mp4") == "cam1"
    assert source_of("a.mp4") == "."
    assert source_of("https://videos.example.org/x/1.mp4") == "videos.example.org"
    assert source_of("/abs/path/v.mp4") == "abs"
