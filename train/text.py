"""The text tower of ``--objective clip``: Hugging Face ``transformers``' CLIP text transformer and its
tokenizer.

``--text-model`` is a named preset (:data:`TEXT_PRESETS`: ``tiny`` for tests and the demo,
``clip-b16`` with CLIP ViT-B/16's text-tower shape; both freshly initialised) or a local folder /
hub name holding a pretrained ``CLIPTextModel`` (with or without its projection). ``--tokenizer``
is a ``tokenizer.json`` file, a folder holding one, or a hub name; the default is the text model's
own tokenizer, and for a preset a byte-level one that needs no files (every caption is its UTF-8
bytes).

What a run needs to rebuild the tower without the hub is a :class:`TextSpec` (the model config and
the tokenizer as JSON text), stored in every checkpoint. Captions are tokenised in the loader's
worker processes by :class:`CaptionTokens`, never in the training loop.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

INSTALL = "pip install 'vidshard[clip]'  (or: pip install 'transformers>=5' tokenizers)"

TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # A few hundred thousand parameters: tests, the demo, CPU runs.
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 32},
    # CLIP ViT-B/16's text tower (63 M parameters, context 77).
    "clip-b16": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77},
}
BOS = ("<|startoftext|>", "<s>", "[CLS]", "<bos>")
EOS = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
PAD = ("<pad>", "[PAD]", "<|pad|>")


def require_text_deps() -> None:
    """Raise a clear error naming the install command when ``transformers``/``tokenizers`` are missing."""
    missing = [m for m in ("transformers", "tokenizers") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"--objective clip needs {' and '.join(missing)}: {INSTALL}")


# --- Tokenizers ---------------------------------------------------------------------------------


def byte_tokenizer_json() -> str:
    """A byte-level tokenizer that needs no training or download: lower-cased NFKC text, one token
    per UTF-8 byte, plus ``<|startoftext|>``, ``<|endoftext|>`` and ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS[0], EOS[0], PAD[0]])
    return tok.to_str()


def load_tokenizer_json(name: str) -> str:
    """Tokenizer JSON from a ``tokenizer.json`` file, a folder holding one, or a hub name."""
    p = Path(name)
    if p.is_file():
        return p.read_text(encoding="utf-8")
    if (p / "tokenizer.json").is_file():
        return (p / "tokenizer.json").read_text(encoding="utf-8")
    from transformers import AutoTokenizer

    try:
        fast = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"tokenizer {name!r}: not a tokenizer.json file, a folder with one, or a hub name "
                         f"({e})") from None
    if not hasattr(fast, "backend_tokenizer"):
        raise ValueError(f"tokenizer {name!r} has no fast (tokenizers) version")
    return fast.backend_tokenizer.to_str()


def special_ids(tokenizer_json: str) -> tuple[int, int, int]:
    """``(bos, eos, pad)`` ids of a tokenizer; pad falls back to eos (as CLIP does)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)

    def first(names: tuple[str, ...]) -> int | None:
        return next((i for n in names if (i := tok.token_to_id(n)) is not None), None)

    bos, eos = first(BOS), first(EOS)
    if bos is None or eos is None:
        raise ValueError(f"the tokenizer has no start/end tokens (one of {BOS} and one of {EOS}); add them "
                         "as special tokens")
    pad = first(PAD)
    return bos, eos, eos if pad is None else pad


def encode(tokenizer: Any, text: str, context: int, ids: tuple[int, int, int]) -> Tensor:
    """``[bos] tokens [eos] pad...`` as int64 ``(context,)``; a long caption is cut to fit, eos kept."""
    bos, eos, pad = ids
    body = tokenizer.encode(text, add_special_tokens=False).ids[: context - 2]
    out = torch.full((context,), pad, dtype=torch.int64)
    out[: len(body) + 2] = torch.tensor([bos, *body, eos], dtype=torch.int64)
    return out


class CaptionTokens:
    """Loader hook of a contrastive run: picks one of a sample's captions and tokenises it.

    Picklable (the tokenizer is rebuilt from its JSON in each worker). ``train`` picks a random
    caption per clip; evaluation takes the first, so a pass is deterministic.
    """

    def __init__(self, tokenizer_json: str, context: int, train: bool = True) -> None:
        self.tokenizer_json, self.context, self.train = tokenizer_json, context, train
        self.ids = special_ids(tokenizer_json)
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}

    def __call__(self, captions: list[str], rng: random.Random) -> dict[str, Tensor]:
        """``captions`` (at least one) -> ``{"text": int64 (context,)}``."""
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self.tokenizer_json)
        text = rng.choice(captions) if self.train else captions[0]
        return {"text": encode(self._tok, text, self.context, self.ids)}

    def batch(self, texts: list[str]) -> Tensor:
        """Tokenise many texts at once (evaluation): ``(N, context)`` int64."""
        self(["-"], random.Random(0))  # builds the tokenizer
        return torch.stack([encode(self._tok, t, self.context, self.ids) for t in texts]) if texts else \
            torch.zeros(0, self.context, dtype=torch.int64)


# --- The text tower -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSpec:
    """Everything that rebuilds a text tower offline: stored in checkpoints."""

    config_json: str
    """``CLIPTextConfig`` as JSON."""
    tokenizer_json: str
    """The tokenizer as ``tokenizers`` JSON."""
    pretrained: str | None = None
    """Folder or hub name the weights came from (None: a preset, fresh weights)."""

    @property
    def context(self) -> int:
        return int(json.loads(self.config_json)["max_position_embeddings"])

    def to_dict(self) -> dict[str, Any]:
        return {"config_json": self.config_json, "tokenizer_json": self.tokenizer_json,
                "pretrained": self.pretrained}

    def hooks(self, train: bool) -> CaptionTokens:
        return CaptionTokens(self.tokenizer_json, self.context, train)


def text_spec(text_model: str, tokenizer: str | None, embed_dim: int) -> TextSpec:
    """Resolve ``--text-model`` / ``--tokenizer`` into a :class:`TextSpec` (reads files or the hub)."""
    require_text_deps()
    from tokenizers import Tokenizer
    from transformers import CLIPTextConfig

    if text_model in TEXT_PRESETS:
        tok_json = load_tokenizer_json(tokenizer) if tokenizer else byte_tokenizer_json()
        bos, eos, pad = special_ids(tok_json)
        vocab = Tokenizer.from_str(tok_json).get_vocab_size(with_added_tokens=True)
        config = CLIPTextConfig(**TEXT_PRESETS[text_model], vocab_size=vocab, projection_dim=embed_dim,
                                bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, hidden_act="quick_gelu")
        return TextSpec(config.to_json_string(), tok_json)
    try:
        config = CLIPTextConfig.from_pretrained(text_model)
    except (OSError, ValueError) as e:
        raise ValueError(f"--text-model {text_model!r}: not a preset ({', '.join(TEXT_PRESETS)}), nor a "
                         f"folder or hub name of a CLIP text model ({e})") from None
    tok_json = load_tokenizer_json(tokenizer or text_model)
    special_ids(tok_json)  # validates
    return TextSpec(config.to_json_string(), tok_json, pretrained=text_model)


def build_text_tower(spec: TextSpec, embed_dim: int) -> torch.nn.Module:
    """A freshly initialised ``CLIPTextModelWithProjection`` of the spec's shape, projecting to
    ``embed_dim`` (:func:`load_pretrained_text` then brings in pretrained weights)."""
    require_text_deps()
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = json.loads(spec.config_json) | {"projection_dim": embed_dim}
    return CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))


def load_pretrained_text(tower: torch.nn.Module, name: str) -> list[str]:
    """Copy the weights of the CLIP text model ``name`` (folder or hub) into ``tower``; returns the
    names left fresh (the projection, when the pretrained one has another width or none)."""
    from transformers import CLIPTextModelWithProjection

    source = CLIPTextModelWithProjection.from_pretrained(name).state_dict()
    own = tower.state_dict()
    fitting = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    fresh = sorted(set(own) - set(fitting))
    if any(not k.startswith("text_projection") for k in fresh):
        raise ValueError(f"--text-model {name!r}: weights do not fit the text tower ({fresh[:3]}...)")
    tower.load_state_dict(fitting, strict=False)
    return fresh


def text_features(tower: torch.nn.Module, ids: Tensor, eos_id: int) -> Tensor:
    """``(B, L)`` token ids -> ``(B, E)`` projected features, read at each caption's end token.

    The pooling position is found here (first ``eos_id``), not by transformers' heuristic, which
    depends on the config's ids; the causal mask makes the padding after it irrelevant.
    """
    hidden = tower.text_model(input_ids=ids).last_hidden_state  # (B, L, H), after the final norm
    end = (ids == eos_id).int().argmax(dim=-1)  # (B,)
    pooled = hidden[torch.arange(ids.shape[0], device=ids.device), end]  # (B, H)
    return tower.text_projection(pooled)  # (B, E)
