"""SD3 text encoding (docs/data.md, "Text encoding and the VAE"): CLIP-L and CLIP-G penultimate hidden states and projected
pooled outputs, T5 last hidden state; CLIP zero-padded on channels to T5's width, then concatenated
with T5 along the sequence. No attention masks, exactly as the reference and diffusers' SD3 pipeline.

Also the tiny, locally built encoders and tokenizers of the demo and of `preset export tiny`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.models.clip.tokenization_clip import CLIPTokenizer as _CLIPTok

from soar_fast.models.folder import ModelFolderError

CLIP_LENGTH = 77


@dataclass
class TextEncoders:
    """The three SD3 text encoders with their tokenizers (all in eval mode, no grad)."""

    clip_l: CLIPTextModelWithProjection
    clip_g: CLIPTextModelWithProjection
    t5: T5EncoderModel
    tokenizer_l: PreTrainedTokenizerBase
    tokenizer_g: PreTrainedTokenizerBase
    tokenizer_t5: PreTrainedTokenizerBase

    @property
    def embed_dim(self) -> int:
        return self.t5.config.d_model

    @property
    def pooled_dim(self) -> int:
        return self.clip_l.config.projection_dim + self.clip_g.config.projection_dim

    @property
    def device(self) -> torch.device:
        return self.t5.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoders:
        for model in (self.clip_l, self.clip_g, self.t5):
            model.to(device=device, dtype=dtype)
        return self

    def _clip(self, model: CLIPTextModelWithProjection, tokenizer: PreTrainedTokenizerBase,
              prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True,
                        return_tensors="pt").input_ids.to(model.device)
        out = model(ids, output_hidden_states=True)
        return out.hidden_states[-2].to(model.dtype), out[0]

    @torch.no_grad()
    def encode(self, prompts: str | list[str], max_sequence_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [B, 77 + max_sequence_length, D], pooled [B, P]) in the encoders' dtype."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        h_l, p_l = self._clip(self.clip_l, self.tokenizer_l, prompts)
        h_g, p_g = self._clip(self.clip_g, self.tokenizer_g, prompts)
        ids = self.tokenizer_t5(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                add_special_tokens=True, return_tensors="pt").input_ids.to(self.t5.device)
        h_t5 = self.t5(ids)[0].to(self.t5.dtype)
        h_clip = torch.cat([h_l, h_g], dim=-1)
        assert h_clip.shape[-1] <= h_t5.shape[-1], (
            f"CLIP width {h_clip.shape[-1]} exceeds T5 width {h_t5.shape[-1]}: not an SD3 encoder set")
        h_clip = F.pad(h_clip, (0, h_t5.shape[-1] - h_clip.shape[-1]))
        return torch.cat([h_clip.to(h_t5.dtype), h_t5], dim=-2), torch.cat([p_l, p_g], dim=-1)


def load_text_encoders(path: str | Path, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> TextEncoders:
    """The encoders of a local SD3 diffusers folder (`text_encoder`, `_2`, `_3` + tokenizers), offline."""
    root = Path(path)
    missing = [s for s in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                           "tokenizer_3") if not (root / s).is_dir()]
    if missing:
        raise ModelFolderError(f"{root}: not an SD3 diffusers folder, missing {', '.join(missing)}/")
    kw = {"local_files_only": True, "torch_dtype": dtype}
    enc = TextEncoders(
        clip_l=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", **kw),
        clip_g=CLIPTextModelWithProjection.from_pretrained(root / "text_encoder_2", **kw),
        t5=T5EncoderModel.from_pretrained(root / "text_encoder_3", **kw),
        tokenizer_l=CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True),
        tokenizer_g=CLIPTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True),
        tokenizer_t5=T5TokenizerFast.from_pretrained(root / "tokenizer_3", local_files_only=True),
    )
    return _ready(enc, device, dtype)


def _ready(enc: TextEncoders, device: torch.device | str, dtype: torch.dtype) -> TextEncoders:
    for model in (enc.clip_l, enc.clip_g, enc.t5):
        model.requires_grad_(False).eval()
    return enc.to(device, dtype)


# ----------------------------------------------------------------------------------------------------
# Tiny encoders: random weights, tokenizers built here from a small word list (no downloads).

_TINY_TEXT = """
a an the of on in with and at to is are this that photo picture image painting drawing small big large tiny
red green blue yellow orange purple pink white black gray grey brown cyan magenta circle square triangle ring
cross star stripe stripes dot dots background foreground left right top bottom center middle two three four
one cat dog car tree house sky sea mountain flower bird person man woman sign says text holding sitting standing
"""
TINY_WORDS = tuple(dict.fromkeys(_TINY_TEXT.split()))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_clip_vocab(words: tuple[str, ...] = TINY_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE in CLIP's layout: every byte, every byte + `</w>`, the
    given words whole, then `<|startoftext|>`, `<|endoftext|>` last (as in CLIP). Any text encodes."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        cur = pieces[0]
        for piece in pieces[1:]:
            merge = (cur, piece)
            cur += piece
            if merge not in merges:
                merges.append(merge)
            if cur not in tokens:
                tokens.append(cur)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tiny_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    vocab, merges = tiny_clip_vocab()
    return _CLIPTok(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=CLIP_LENGTH)


def build_tiny_t5_tokenizer(words: tuple[str, ...] = TINY_WORDS) -> T5TokenizerFast:
    """A Unigram tokenizer in T5's layout (<pad>=0, </s>=1, <unk>=2): whole words, then single
    characters as the fallback, so any ASCII text encodes."""
    printable = [chr(c) for c in range(33, 127)]
    scored = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(f"▁{w}", -5.0) for w in words]
    scored += [(f"▁{c}", -10.0) for c in printable] + [(c, -11.0) for c in printable]
    seen: set[str] = set()
    vocab = [(p, score) for p, score in scored if not (p in seen or seen.add(p))]
    extra = 8
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra - 1, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=extra, model_max_length=512)


def tiny_clip_widths(pooled_dim: int) -> tuple[int, int]:
    """(CLIP-L, CLIP-G) widths in SD3's 768 : 1280 = 3 : 5 ratio summing to `pooled_dim`."""
    width_l = max(2, (3 * pooled_dim // 8) // 2 * 2)
    return width_l, pooled_dim - width_l


def build_tiny_text_encoders(embed_dim: int = 64, pooled_dim: int = 64, *, seed: int = 0, layers: int = 2,
                             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TextEncoders:
    """Random-init SD3-shaped encoders: T5 width `embed_dim` (the transformer's joint_attention_dim),
    CLIP-L + CLIP-G widths summing to `pooled_dim` (pooled_projection_dim, ≤ embed_dim)."""
    assert pooled_dim <= embed_dim, f"pooled_dim {pooled_dim} must be <= embed_dim {embed_dim} (CLIP is padded to T5)"
    tok_l, tok_g, tok_t5 = build_tiny_clip_tokenizer(), build_tiny_clip_tokenizer("!"), build_tiny_t5_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clips = []
        for width, tok in zip(tiny_clip_widths(pooled_dim), (tok_l, tok_g)):
            heads = 2 if width % 4 == 0 else 1
            config = CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                                    projection_dim=width, num_hidden_layers=layers, num_attention_heads=heads,
                                    max_position_embeddings=CLIP_LENGTH, hidden_act="gelu",
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
            clips.append(CLIPTextModelWithProjection(config))
        heads = 2 if embed_dim % 2 == 0 else 1
        t5_config = T5Config(vocab_size=len(tok_t5), d_model=embed_dim, d_kv=max(embed_dim // heads // 2, 4),
                             d_ff=2 * embed_dim, num_layers=layers, num_heads=heads,
                             relative_attention_num_buckets=8, relative_attention_max_distance=32,
                             feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                             pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        t5 = T5EncoderModel(t5_config)
    finally:
        torch.random.set_rng_state(generator_state)
    enc = TextEncoders(clips[0], clips[1], t5, tok_l, tok_g, tok_t5)
    return _ready(enc, device, dtype)
