"""``--objective mae`` through the real loop on an unlabeled shard set, ``--init-from`` its
checkpoint, and ``inspect --reconstruct``'s sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.schema import Manifest, SampleMeta, sample_members, video_id
from vidshard.shards.writer import ShardWriter
from vidshard.train.checkpoint import latest_checkpoint, load_checkpoint
from vidshard.train.config import TrainConfig
from vidshard.train.loop import train
from vidshard.train.mae import MAEConfig, MaskedVideoAutoencoder
from vidshard.train.model import VideoViT, ViTConfig
from vidshard.train.visualize import reconstruction_rows, save_reconstruction_sheet

PATTERNS = ("testsrc2", "mandelbrot", "moving", "testsrc2")


def write_shardset(folder: Path, labeled: bool) -> Path:
    """Four 1-second 64x48 clips in two shards; labels (pattern index % 2) only when ``labeled``."""
    classes = ["a", "b"] if labeled else None
    writer, infos = ShardWriter(folder, max_bytes=1), []  # every sample gets its own shard
    for i, pattern in enumerate(PATTERNS):
        rel = f"{pattern}{i}.mp4"
        path = synth_video(folder.parent / f"{folder.name}_raw" / rel,
                           Synth(pattern=pattern, seconds=1.0, fps=10, width=64, height=48, gop=5))
        label = {"label": i % 2, "label_name": classes[i % 2]} if labeled else {}
        meta = SampleMeta(video=rel, video_id=video_id(rel), chunk=0, start_s=0.0, end_s=1.0, frames=10,
                          fps=10.0, width=64, height=48, **label)
        infos += writer.write(sample_members(meta, path.read_bytes()))
    infos.append(writer.close())
    Manifest(settings={"synthetic": True}, shards=infos, classes=classes).save(folder)
    return folder


def tiny_run(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="vit-t", frames=4, stride=2, size=32, batch_size=2,
                steps=4, workers=0, progress=False, log_every=2, ckpt_every=100, crop_scale=(0.5, 1.0),
                threads=1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An MAE run on an unlabeled shard set; returns (shard set, checkpoint)."""
    root = tmp_path_factory.mktemp("mae_run")
    data = write_shardset(root / "unlabeled", labeled=False)
    cfg = tiny_run(data, root / "run", objective="mae", mask_ratio=0.75, decoder_dim=64, decoder_depth=1)
    result = train(cfg)
    assert result.steps == 4 and np.isfinite(result.last_loss) and result.checkpoint is not None
    return data, result.checkpoint


def test_mae_trains_on_unlabeled_shardset_and_checkpoint_rebuilds(mae_run: tuple[Path, Path]) -> None:
    _, path = mae_run
    ckpt = load_checkpoint(path)
    assert ckpt["objective"] == "mae" and ckpt["step"] == 4
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)  # VideoMAE's beta2 by default
    assert any(k.startswith("decoder_") for k in ckpt["model"])
    enc = {k for k in ckpt["model"] if k.startswith("encoder.")}
    assert "encoder.blocks.11.attn.qkv.weight" in enc and not any(".head." in k for k in enc)



def test_mae_validates_with_its_reconstruction_loss_even_on_a_labeled_set(tmp_path: Path) -> None:
    """Through the CLI, which printed the result as accuracy (``KeyError: 'top1'``) after training."""
    import json

    from typer.testing import CliRunner
    from vidshard.cli import app

    data = write_shardset(tmp_path / "unlabeled", labeled=False)
    val = write_shardset(tmp_path / "labeled", labeled=True)  # labels are there, MAE ignores them
    args = ["train", str(data), "--val", str(val), "--out", str(tmp_path / "run"), "--objective", "mae",
            "--model", "vit-t", "--frames", "4", "--stride", "2", "--size", "32", "--batch-size", "2",
            "--steps", "2", "--workers", "0", "--threads", "1", "--mask-ratio", "0.75", "--decoder-dim", "64",
            "--decoder-depth", "1", "--crop-scale", "0.5", "1.0", "--quiet"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "run" / "val.json").read_text())
    assert np.isfinite(result["loss"]) and result["loss"] > 0 and result["clips"] == 4
    assert f"validation: loss {result['loss']:.4f} on 4 clips" in out.output


def test_init_from_mae_checkpoint_finetunes_a_classifier(mae_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = mae_run
    pretrained = load_checkpoint(path)["model"]
    labeled = write_shardset(tmp_path / "labeled", labeled=True)
    cfg = tiny_run(labeled, tmp_path / "ft", init_from=str(path), layer_decay=0.75, drop_path=0.1, steps=1,
                   lr=1e-12, warmup_steps=0, min_lr=1e-12)
    train(cfg)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ft"))
    assert ckpt["objective"] == "supervised" and ckpt["num_classes"] == 2
    model = ckpt["model"]
    # At a vanishing learning rate the encoder still holds the MAE weights; the head is new.
    for name in ("patch_embed.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight", "norm.weight"):
        torch.testing.assert_close(model[name], pretrained[f"encoder.{name}"], rtol=0, atol=1e-6)
    assert model["head.weight"].shape == (2, 192)
    assert not any(k.startswith("decoder") for k in model)


def test_reconstruction_sheet(mae_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, path = mae_run
    out = save_reconstruction_sheet(str(path), str(data), tmp_path / "recon.png", samples=2)
    img = Image.open(out)
    assert img.format == "PNG" and img.height > 3 * 2 * 32  # three rows per sample
    with pytest.raises(ValueError, match="no decoder"):
        sup = tmp_path / "sup"
        train(tiny_run(write_shardset(tmp_path / "lab", labeled=True), sup, steps=1))
        save_reconstruction_sheet(str(latest_checkpoint(sup)), str(data), tmp_path / "x.png", samples=1)


def test_reconstruction_rows_keep_visible_pixels() -> None:
    vit = ViTConfig(dim=32, depth=1, heads=2, patch_size=8, tubelet=2, frames=4, img_size=16)
    model = MaskedVideoAutoencoder(VideoViT(vit), MAEConfig(mask_ratio=0.5, decoder_dim=16, decoder_depth=1))
    video = torch.randint(10, 256, (1, 3, 4, 16, 16), dtype=torch.uint8)  # no value survives greying
    (orig, masked, filled), = reconstruction_rows(model, video)
    assert len(orig) == 2 and orig[0].shape == (16, 16, 3) and orig[0].dtype == np.uint8
    assert np.array_equal(orig[0], video[0, :, 0].permute(1, 2, 0).numpy())
    visible = (masked[0] == orig[0]).all(-1)  # (H, W): pixels not greyed out
    # Visible pixels are copied into the reconstruction row unchanged; half the patches are masked.
    assert np.array_equal(filled[0][visible], orig[0][visible])
    assert visible.mean() == 0.5
