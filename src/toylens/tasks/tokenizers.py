"""Tokenizers for the text tasks, all through Hugging Face `tokenizers`, all offline.

    tok = load_tokenizer("gpt2")            # byte-level BPE, 50,257 ids (file shipped in the package)
    tok = load_tokenizer("bert-base-uncased")   # WordPiece, 30,522 ids, [CLS] ... [SEP]
    tok = load_tokenizer("char")            # one id per byte (= per character for ASCII), 258 ids
    tok = load_tokenizer("path/to/tokenizer.json")   # any local tokenizer.json (or a folder holding one)
    tok.encode("Hello world")               # [15496, 995]

The GPT-2 and BERT files and their licences are in `toylens/data/tokenizers/` (see the NOTICE
there). `fingerprint` (SHA-256 of the serialised tokenizer) keys the token caches, so a changed
tokenizer file never reuses stale tokens.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from toylens.errors import ToylensError

BUNDLED = ("gpt2", "bert-base-uncased")
NAMES = (*BUNDLED, "char")
_EOS_CANDIDATES = ("<|endoftext|>", "[SEP]", "</s>", "<eos>", "<|eos|>")
_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>")


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus what the tasks need: end-of-text and padding ids, the special
    tokens the tokenizer appends (kept when a review is truncated), readable token labels."""

    def __init__(self, name: str, tok: Tokenizer):
        self.name, self.tok = name, tok
        self.fingerprint = hashlib.sha256(tok.to_str().encode()).hexdigest()
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        vocab = tok.get_vocab(with_added_tokens=True)
        eos = next((vocab[t] for t in _EOS_CANDIDATES if t in vocab), None)
        pad = next((vocab[t] for t in _PAD_CANDIDATES if t in vocab), eos)
        self.eos_id: int | None = eos
        self.pad_id: int = 0 if pad is None else pad
        probe = tok.encode("a")
        trailing = len(probe.ids) - 1 - max(i for i, s in enumerate(probe.special_tokens_mask) if not s)
        self.suffix_ids: list[int] = probe.ids[len(probe.ids) - trailing :] if trailing else []
        leading = next((i for i, s in enumerate(probe.special_tokens_mask) if not s), 0)
        self.prefix_ids: list[int] = probe.ids[:leading]
        """The special tokens the tokenizer puts before a text ([CLS] for BERT)."""

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size})"

    @property
    def special_ids(self) -> list[int]:
        """End-of-text, padding and the tokens the tokenizer appends ([SEP]), sorted."""
        return sorted({i for i in (self.eos_id, self.pad_id, *self.suffix_ids) if i is not None})

    def encode(self, text: str, special_tokens: bool = True) -> list[int]:
        """Token ids of one text (with the tokenizer's [CLS]/[SEP]-style tokens unless told not to)."""
        return self.tok.encode(text, add_special_tokens=special_tokens).ids

    def encode_batch(self, texts: list[str], special_tokens: bool = True) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel (the Rust library's threads)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=special_tokens)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_labels(self, ids: list[int]) -> list[str]:
        """One readable string per id, for attention axes: the decoded text of the token
        (" movie" for GPT-2), or its vocabulary entry ("##ing", "[CLS]") where decoding one id
        alone would hide it."""
        out = []
        for i in ids:
            text = self.tok.decode([i], skip_special_tokens=False)
            piece = self.tok.id_to_token(i)
            out.append(
                piece if piece is not None and (not text or piece.startswith("##") or "\ufffd" in text) else text
            )
        return out


def load_tokenizer(name: str, field: str = "task.tokenizer") -> TextTokenizer:
    """`gpt2`, `bert-base-uncased`, `char`, or a path to a tokenizer.json (or to a folder with one)."""
    if name in BUNDLED:
        return _bundled(name)
    if name == "char":
        return _char()
    path = Path(name).expanduser()
    looks_like_path = "/" in name or "\\" in name or name.endswith(".json") or path.exists()
    if not looks_like_path:
        raise ToylensError(
            f"{field}: unknown tokenizer {name!r}; use one of {', '.join(NAMES)} or a path to a tokenizer.json"
        )
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ToylensError(f"{field}: {path}: no such tokenizer file")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises plain Exception on any parse error
        raise ToylensError(f"{field}: {path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    return TextTokenizer(str(path), tok)


@functools.cache
def _bundled(name: str) -> TextTokenizer:
    ref = resources.files("toylens") / "data" / "tokenizers" / name / "tokenizer.json"
    return TextTokenizer(name, Tokenizer.from_str(ref.read_text(encoding="utf-8")))


@functools.cache
def _char() -> TextTokenizer:
    """Byte-level characters: id b for byte b (0..255), then <|endoftext|> = 256 and <pad> = 257.

    Built from the GPT-2 byte-to-unicode table with no merges, so decoding is exact for any
    UTF-8 text and ASCII text gets one id per character.
    """
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<pad>"])
    return TextTokenizer("char", tok)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
