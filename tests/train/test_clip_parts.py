"""The parts of ``--objective clip``: retrieval metrics against hand-computed values, the InfoNCE loss
over 2 gloo ranks against one process, the text tower and tokenizers, image-CLIP inflation."""

from __future__ import annotations

import math
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from vidshard.train.clip import contrastive_loss
from vidshard.train.retrieval import (
    caption_relevance,
    first_relevant_ranks,
    mean_average_precision,
    median_rank,
    ndcg,
    recall_at,
    retrieval_metrics,
)

# --- retrieval metrics ---------------------------------------------------------------------------

SIM = torch.tensor([[0.9, 0.1, 0.5, 0.2],  # 3 videos x 4 texts
                    [0.3, 0.8, 0.7, 0.1],
                    [0.2, 0.6, 0.4, 0.0]])
REL = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])


def test_retrieval_metrics_match_hand_computed_values() -> None:
    r = retrieval_metrics(SIM, REL)
    v2t, t2v = r["video_to_text"], r["text_to_video"]
    # video->text: first relevant texts at ranks 1, 1, 4.
    assert first_relevant_ranks(SIM, REL).tolist() == [1, 1, 4]
    assert (v2t["R@1"], v2t["R@5"], v2t["median_rank"]) == (pytest.approx(2 / 3), 1.0, 1.0)
    assert v2t["mAP"] == pytest.approx((1 + 1 + 0.25) / 3)  # AP: 1/1; (1/1 + 2/2)/2; 1/4
    assert v2t["nDCG"] == pytest.approx(2 / 3)  # the third query's one relevant text is not first
    # text->video: ranks 1, 1, 1, 3.
    assert first_relevant_ranks(SIM.T, REL.T).tolist() == [1, 1, 1, 3]
    assert (t2v["R@1"], t2v["median_rank"]) == (0.75, 1.0)
    assert t2v["mAP"] == pytest.approx((3 + 1 / 3) / 4)
    assert t2v["nDCG"] == pytest.approx(0.75)
    assert r["mAP"] == pytest.approx((v2t["mAP"] + t2v["mAP"]) / 2)


def test_map_and_ndcg_with_partial_relevance_follow_epic_kitchens() -> None:
    sim = torch.tensor([[0.5, 0.9, 0.1]])  # ranked order: items 1, 0, 2
    rel = torch.tensor([[1.0, 0.5, 1.0]])  # ranked relevance 0.5, 1, 1
    # EK-100: cumulative relevance [0.5, 1.5, 2.5] kept where rel == 1, / position, summed, / 2 items.
    assert mean_average_precision(sim, rel) == pytest.approx((1.5 / 2 + 2.5 / 3) / 2)
    dcg = 0.5 / 1 + 1 / math.log2(3) + 1 / 2
    idcg = 1 / 1 + 1 / math.log2(3) + 0.5 / 2
    assert ndcg(sim, rel) == pytest.approx(dcg / idcg)


def test_recall_median_and_caption_relevance() -> None:
    ranks = torch.tensor([1, 2, 7, 30])
    assert [recall_at(ranks, k) for k in (1, 5, 10)] == [0.25, 0.5, 0.75]
    assert median_rank(ranks) == 4.5
    texts, rel = caption_relevance([["a dog"], ["a cat", "a dog"], ["a cat"]])
    assert texts == ["a cat", "a dog"]
    assert rel.tolist() == [[0, 1], [1, 1], [1, 0]]
    with pytest.raises(ValueError, match="must be equal"):
        retrieval_metrics(SIM, REL[:, :2])


# --- the contrastive loss ------------------------------------------------------------------------


def _pairs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xv, xt = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    wv, wt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    valid = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)  # rank 0 holds one padding clip
    return xv, xt, wv, wt, valid


def _loss_and_grads(xv, xt, wv, wt, valid):
    wv, wt = wv.clone().requires_grad_(), wt.clone().requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07)).requires_grad_()
    loss, metrics = contrastive_loss(F.normalize(xv @ wv, dim=-1), F.normalize(xt @ wt, dim=-1),
                                     scale.exp(), valid)
    loss.backward()
    return loss.detach(), metrics, [wv.grad, wt.grad, scale.grad]


def _reference(xv, xt, wv, wt, valid):
    """The loss and gradients written out plainly (no gather, no weighting): the valid pairs only."""
    wv, wt = wv.clone().requires_grad_(), wt.clone().requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07)).requires_grad_()
    v, t = F.normalize(xv @ wv, dim=-1)[valid], F.normalize(xt @ wt, dim=-1)[valid]
    logits = scale.exp() * v @ t.T
    target = torch.arange(len(v))
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    loss.backward()
    return loss.detach(), [wv.grad, wt.grad, scale.grad]


def test_loss_is_symmetric_infonce_and_ignores_padding() -> None:
    xv, xt, wv, wt, valid = _pairs()
    loss, metrics, grads = _loss_and_grads(xv, xt, wv, wt, valid)
    expected, expected_grads = _reference(xv, xt, wv, wt, valid)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    for g, h in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    assert metrics["acc"].ndim == 0 and 0 <= metrics["acc"].item() <= 1
    # A batch of padding only: zero loss and finite (zero) gradients, not NaN.
    pad_loss, _, grads = _loss_and_grads(xv, xt, wv, wt, torch.zeros(8, dtype=torch.bool))
    assert pad_loss == 0 and all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_identical_captions_need_no_special_targets() -> None:
    """A batch with repeated captions (the CPU evidence: 12 captions, batch 16): identical token ids give
    identical text embeddings, so CLIP's one-hot targets already give the loss and gradients of targets
    that put equal mass on every clip carrying the same caption. Deduplicating would change nothing."""
    torch.manual_seed(0)
    caption = torch.tensor([0, 1, 0, 2, 1, 0])  # which of 3 captions each of 6 clips carries
    video = torch.randn(6, 8, requires_grad=True)
    words = torch.randn(3, 8, requires_grad=True)  # one text embedding per distinct caption
    scale = torch.tensor(10.0)

    def losses(jitter: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        v, t = F.normalize(video, dim=-1), F.normalize(words, dim=-1)[caption]
        t = F.normalize(t + jitter * torch.randn(t.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
        same = (caption[:, None] == caption[None]).float()  # (6, 6)
        soft = same / same.sum(dim=1, keepdim=True)  # equal mass on every identical caption
        logits = scale * v @ t.T
        shared = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
        return contrastive_loss(v, t, scale)[0], shared

    hard, shared = losses()
    grads_hard = torch.autograd.grad(hard, (video, words))
    grads_shared = torch.autograd.grad(losses()[1], (video, words))
    assert hard.item() == pytest.approx(shared.item(), rel=1e-6)
    for g, h in zip(grads_hard, grads_shared, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)
    hard, shared = losses(jitter=0.1)  # the premise: embeddings of one caption that differ break it
    assert abs(hard.item() - shared.item()) > 1e-3


WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist, torch.nn.functional as F, math
    sys.path.insert(0, {tests!r})
    from test_clip_parts import _pairs
    from vidshard.train.clip import contrastive_loss
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    xv, xt, wv, wt, valid = _pairs()
    rows = slice(rank * 4, rank * 4 + 4)
    wv, wt = wv.requires_grad_(), wt.requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07)).requires_grad_()
    loss, _ = contrastive_loss(F.normalize(xv[rows] @ wv, dim=-1), F.normalize(xt[rows] @ wt, dim=-1),
                               scale.exp(), valid[rows])
    loss.backward()
    out = [loss.detach(), wv.grad, wt.grad, scale.grad]
    for t in out:  # what DDP does with gradients (and the loop with the logged loss): mean over ranks
        dist.all_reduce(t)
        t /= world
    if rank == 0:
        torch.save(out, {out!r})
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_give_the_loss_and_gradients_of_one_process(tmp_path: Path) -> None:
    script, out = tmp_path / "worker.py", tmp_path / "out.pt"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss, *grads = torch.load(out)
    one_loss, one_grads = _reference(*_pairs())
    assert loss.item() == pytest.approx(one_loss.item(), rel=1e-5)
    for g, h in zip(grads, one_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


# --- text tower and tokenizers -------------------------------------------------------------------


def wordlevel_tokenizer(captions: list[str], path: Path) -> Path:
    """A word-level tokenizer trained on ``captions`` (offline), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    tok.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=specials))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def test_byte_tokenizer_truncates_long_captions_and_keeps_the_end_token() -> None:
    from vidshard.train.text import CaptionTokens, byte_tokenizer_json

    hook = CaptionTokens(byte_tokenizer_json(), context=8, train=True)
    bos, eos, pad = hook.ids
    short = hook(["Red"], random.Random(0))["text"]
    assert short.shape == (8,) and short[0].item() == bos and short[4].item() == eos
    assert (short[5:] == pad).all() and len(set(short[1:4].tolist())) == 3  # one token per byte of "red"
    long = hook(["a red square moving to the left"], random.Random(0))["text"]
    assert long[0].item() == bos and long[-1].item() == eos and len(set(long.tolist())) > 3
    hook2 = pickle.loads(pickle.dumps(hook))  # goes to loader workers
    assert torch.equal(hook2(["Red"], random.Random(0))["text"], short)
    picks = {hook(["one", "two", "three"], random.Random(s))["text"][1].item() for s in range(20)}
    assert len(picks) > 1  # training samples among a clip's captions
    evaluation = CaptionTokens(byte_tokenizer_json(), context=8, train=False)
    first = evaluation(["one"], random.Random(0))["text"]
    assert all(torch.equal(evaluation(["one", "two"], random.Random(s))["text"], first) for s in range(5))


def test_text_spec_presets_wordlevel_and_pretrained_folder(tmp_path: Path) -> None:
    from transformers import CLIPTextModelWithProjection
    from vidshard.train.text import build_text_tower, load_pretrained_text, text_features, text_spec

    tok = wordlevel_tokenizer(["red square moving left", "blue circle moving up"], tmp_path / "tok.json")
    spec = text_spec("tiny", str(tok), embed_dim=16)
    assert spec.context == 32 and spec.pretrained is None
    tower = build_text_tower(spec, 16)
    assert tower.config.vocab_size == 4 + 7  # specials + the distinct words
    ids = spec.hooks(train=False).batch(["red circle", "blue square moving up", "red zebra"])
    assert text_features(tower, ids, tower.config.eos_token_id).shape == (3, 16)
    # A pretrained text model in a folder (save_pretrained) with its tokenizer.json beside it.
    folder = tmp_path / "pretrained"
    tower.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tok.read_text())
    spec2 = text_spec(str(folder), None, embed_dim=16)
    assert spec2.pretrained == str(folder)
    fresh = build_text_tower(spec2, 16)
    assert load_pretrained_text(fresh, str(folder)) == []
    for (k, a), b in zip(tower.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert isinstance(fresh, CLIPTextModelWithProjection)
    with pytest.raises(ValueError, match="not a preset"):
        text_spec(str(tmp_path / "nothing-here"), None, 16)


# --- inflation -----------------------------------------------------------------------------------


def _image_clip(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=16, hidden_act="quick_gelu")
    image = CLIPVisionModel(vc).eval()
    for p in image.parameters():  # random everything, so every weight's mapping matters
        torch.nn.init.normal_(p, std=0.3) if p.ndim > 1 else torch.nn.init.normal_(p, mean=0.1, std=0.3)
    path = tmp_path / "clip_vision.pt"
    torch.save(image.state_dict(), path)
    return image, path


def test_inflated_static_clip_gives_the_image_models_features(tmp_path: Path) -> None:
    from vidshard.train.inflate import build_video_tower, inflate_image_clip, read_image_clip
    from vidshard.train.model import ViTConfig

    image, path = _image_clip(tmp_path)
    vision = read_image_clip(path)
    assert vision is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = image(pixel_values=x).pooler_output  # (B, D): post-norm class token
        # One tubelet: the whole forward equals the image model's.
        video = build_video_tower(ViTConfig(dim=64, depth=2, heads=2, frames=2, img_size=32), "clip").eval()
        inflate_image_clip(video, vision)
        got = video(x[:, :, None].repeat(1, 1, 2, 1, 1))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        # Four tubelets: every time step embeds exactly like the image (patches + spatial positions).
        long = build_video_tower(ViTConfig(dim=64, depth=2, heads=2, frames=8, img_size=32), "clip").eval()
        inflate_image_clip(long, vision)
        tokens = long.embed(x[:, :, None].repeat(1, 1, 8, 1, 1)).view(2, 4, 4, 64)  # (B, t, h*w, D)
        emb = getattr(image, "vision_model", image).embeddings(x)[:, 1:]  # (B, h*w, D), positions added
        for t in range(4):
            torch.testing.assert_close(tokens[:, t], emb, rtol=1e-4, atol=1e-4)


def test_inflation_refuses_a_model_of_another_shape_or_layout(tmp_path: Path) -> None:
    from vidshard.train.inflate import build_video_tower, inflate_image_clip, read_image_clip
    from vidshard.train.model import ViTConfig

    _, path = _image_clip(tmp_path)
    vision = read_image_clip(path)

    def tower(arch: str = "clip", **shape: int) -> torch.nn.Module:
        return build_video_tower(ViTConfig(**({"dim": 64, "depth": 2, "heads": 2} | shape), frames=2,
                                           img_size=32), arch)

    with pytest.raises(ValueError, match="--vit-arch clip"):
        inflate_image_clip(tower("vidshard"), vision)
    with pytest.raises(ValueError, match="does not fit"):
        inflate_image_clip(tower(dim=32), vision)
    with pytest.raises(ValueError, match="more than 1 layers"):
        inflate_image_clip(tower(depth=1), vision)
    torch.save({"format": "vidshard-checkpoint/1", "model": {}}, tmp_path / "ckpt.pt")
    assert read_image_clip(tmp_path / "ckpt.pt") is None


# --- initialisation and config -------------------------------------------------------------------


def test_init_from_a_clip_checkpoint_or_image_clip_weights(tmp_path: Path) -> None:
    from vidshard.train.checkpoint import FORMAT, load_encoder
    from vidshard.train.config import TrainConfig
    from vidshard.train.inflate import build_video_tower
    from vidshard.train.model import VideoViT, ViTConfig
    from vidshard.train.objectives import get_objective, vit_config

    cfg = TrainConfig(data="(test)", objective="clip", model="vit-t", frames=4, size=32)
    clip_model = get_objective("clip").build_model(cfg, 0)
    torch.save({"format": FORMAT, "model": clip_model.state_dict()}, tmp_path / "clip.pt")
    video = VideoViT(vit_config(cfg, 3))  # a classifier fine-tuned from the clip run's video tower
    assert load_encoder(video, tmp_path / "clip.pt") == ["head.weight", "head.bias"]
    for k, v in clip_model.encoder.state_dict().items():
        assert torch.equal(video.state_dict()[k], v), k
    # image-CLIP vision weights through the same door (--init-from), into a --vit-arch clip tower
    _, path = _image_clip(tmp_path)
    tower = build_video_tower(ViTConfig(dim=64, depth=2, heads=2, frames=4, img_size=32), "clip")
    assert load_encoder(tower, path) == []
    with pytest.raises(ValueError, match="--vit-arch clip is for --objective clip"):
        TrainConfig(data="x", vit_arch="clip")
    assert TrainConfig(data="x", objective="clip", vit_arch="clip").vit_arch == "clip"


def test_a_clip_checkpoint_rebuilds_offline_from_its_weights(tmp_path: Path) -> None:
    """The text spec (config + tokenizer) rides in the state dict: no tokenizer file is read again."""
    from vidshard.train.clip import spec_from_state
    from vidshard.train.config import TrainConfig
    from vidshard.train.objectives import get_objective

    tok = wordlevel_tokenizer(["red square", "blue bar"], tmp_path / "tok.json")
    cfg = TrainConfig(data="(test)", objective="clip", model="vit-t", frames=4, size=32, tokenizer=str(tok))
    model = get_objective("clip").build_model(cfg, 0)
    tok.unlink()
    again = get_objective("clip")
    again.restore(model.state_dict())
    rebuilt = again.build_model(cfg, 0)
    rebuilt.load_state_dict(model.state_dict())
    assert spec_from_state(rebuilt.state_dict()) == model.spec
    ids = model.spec.hooks(train=False).batch(["red bar"])
    torch.testing.assert_close(rebuilt.encode_text(ids), model.encode_text(ids))


def test_missing_text_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from vidshard.train import text

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"needs transformers: pip install 'vidshard\[clip\]'"):
        text.require_text_deps()


def test_cli_help_lists_the_clip_options() -> None:
    from typer.testing import CliRunner
    from vidshard.cli import app

    runner = CliRunner()
    text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    for opt in ("--text-model", "--tokenizer", "--embed-dim", "--vit-arch"):
        assert opt in text, opt
    assert "contrastive" in text
    text = runner.invoke(app, ["eval", "--help"], terminal_width=200).output
    for opt in ("--retrieval", "--zero-shot", "--prompt", "--relevance"):
        assert opt in text, opt
    text = runner.invoke(app, ["bench", "model", "--help"], terminal_width=200).output
    assert "--objective" in text and "--batch-sizes" in text
    bad = runner.invoke(app, ["eval", "nowhere/", "--checkpoint", "x", "--zero-shot", "--prompt", "no slot"])
    assert bad.exit_code == 2 and "needs a {} for the class name" in bad.output


def test_relevance_file_is_checked_where_it_enters(tmp_path: Path) -> None:
    import numpy as np
    from vidshard.train.clip_eval import read_relevance

    keys = ["a_00000", "b_00000", "c_00000"]
    good = tmp_path / "rel.npz"
    np.savez(good, keys=np.array(["c_00000", "a_00000"]), texts=np.array(["open fridge", "take milk"]),
             relevance=np.array([[1.0, 0.5], [0.0, 1.0]]))
    texts, rel, rows = read_relevance(good, keys)
    assert texts == ["open fridge", "take milk"] and rows == [2, 0]
    assert rel.tolist() == [[1.0, 0.5], [0.0, 1.0]]
    bad = tmp_path / "bad.npz"
    np.savez(bad, keys=np.array(["x_00000"]), texts=np.array(["t"]), relevance=np.array([[1.0]]))
    with pytest.raises(ValueError, match="1 keys are not samples"):
        read_relevance(bad, keys)
    np.savez(bad, keys=np.array(["a_00000"]), texts=np.array(["t"]), relevance=np.array([[2.0]]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        read_relevance(bad, keys)
    np.savez(bad, keys=np.array(["a_00000"]), texts=np.array(["t", "u"]), relevance=np.array([[1.0]]))
    with pytest.raises(ValueError, match="len\\(keys\\) x len\\(texts\\)"):
        read_relevance(bad, keys)
    np.savez(bad, keys=np.array(["a_00000"], dtype=object), texts=np.array(["t"]),
             relevance=np.array([[1.0]]))
    with pytest.raises(ValueError, match="not a relevance file"):
        read_relevance(bad, keys)  # object arrays need pickle: refused
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a relevance file"):
        read_relevance(tmp_path / "junk.npz", keys)


def test_tower_memory_bench_measures_both_towers() -> None:
    from vidshard.benchmarks.clip_memory import _tower_peak
    from vidshard.benchmarks.model import ModelBenchConfig

    cfg = ModelBenchConfig(model="vit-t", frames=2, size=32, threads=1)
    for tower in ("video", "text"):
        peak, secs = _tower_peak(cfg, tower, 2, "tiny", "cpu")
        assert peak >= 0 and secs > 0
