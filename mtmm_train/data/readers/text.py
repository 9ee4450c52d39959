"""Text -> token ids: a word vocabulary from the training split, or a pretrained tokenizer."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.optional import require
from mtmm_train.data.readers.base import (
    ModalityReader,
    ReadContext,
    ReadResult,
    check_scalar_cells,
    learned,
    present_of,
    state_entry,
)
from mtmm_train.errors import KEY, ComponentError, SettingError, UserError

PAD, UNK = 0, 1  # id 0 is padding (encoders ignore it); 1 stands for words not in the vocabulary
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TextReader(ModalityReader):
    """A text column -> ``(max_length,)`` token ids, 0-padded.

    Without ``tokenizer``, words (and punctuation marks) are the tokens, and the vocabulary
    is built from the training split: words seen at least ``min_count`` times, the
    ``max_vocab`` most frequent first; other words map to an unknown id. With ``tokenizer``,
    a pretrained tokenizer splits the text (its ids shifted by one, so 0 stays padding).

    Args:
        name: the modality name (passed in by the dataset).
        column: the text column; null: ``name``.
        max_length: tokens kept per text (longer texts are cut; special tokens included); null: 32, or what the
            modality's encoder asks for (a Hugging Face model: its maximum, see mtmm_train.preprocessing).
        min_count: least count in the training split for a word to enter the vocabulary.
        max_vocab: most words in the vocabulary.
        lowercase: lowercase before splitting into words.
        tokenizer: null (words), a ``tokenizer.json`` file (needs the ``tokenizers`` package),
            or a Hugging Face tokenizer name already in the local cache (needs ``transformers``;
            nothing is downloaded).
        special_tokens: add the tokenizer's special tokens (``[CLS]``, ``[SEP]``, ``<s>``...); null: false
            unless the encoder asks for them. Words have none.

    The spec's ``info`` records ``tokenizer`` and ``special_tokens``, for the encoder to check.
    """

    def __init__(self, name: str, column: str | None = None, max_length: int | None = None, min_count: int = 1,
                 max_vocab: int = 20000, lowercase: bool = True, tokenizer: str | None = None,
                 special_tokens: bool | None = None) -> None:
        super().__init__(name, column)
        max_length = 32 if max_length is None else max_length
        for setting, value in (("max_length", max_length), ("min_count", min_count), ("max_vocab", max_vocab)):
            if value < 1:
                raise SettingError(setting, f"must be >= 1, found {value}")
        self.max_length, self.min_count, self.max_vocab = max_length, min_count, max_vocab
        self.lowercase, self.tokenizer = lowercase, tokenizer
        self.special_tokens = bool(special_tokens) and tokenizer is not None

    def words(self, text: str) -> list[str]:
        """Split one text into words and punctuation marks."""
        return WORD.findall(text.lower() if self.lowercase else text)

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        return self._read(table, ctx, None)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[ModalitySpec]:
        """Token ids with the stored vocabulary (``words``, in id order), or the stored ``tokenizer``'s
        (see :meth:`Reader.read_with`)."""
        if self.tokenizer is not None:
            if state.get("tokenizer") != self.tokenizer:
                raise ComponentError(f"the stored state names the tokenizer {state.get('tokenizer')!r}, the reader "
                                     f"has {self.tokenizer!r}; predict with the config the model was trained with")
            return self._read(table, ctx, None)
        words = state_entry(state, "words", list, "text")
        if not words or not all(isinstance(w, str) for w in words) or len(set(words)) != len(words):
            raise ComponentError("the stored vocabulary of this text reader is empty, holds a word twice or holds "
                                 "something other than words; it was written by another reader or version")
        return self._read(table, ctx, {w: i + 2 for i, w in enumerate(words)})

    def _read(self, table: Table, ctx: ReadContext, vocab: dict[str, int] | None) -> ReadResult[ModalitySpec]:
        """:meth:`read` (``vocab`` None: learned from the training split, when the reader splits words)."""
        cells = table[self.column]
        check_scalar_cells(cells, self.column, "a text", ctx.manifest)
        present = present_of(cells)
        texts = [str(v) if p else "" for v, p in zip(cells, present.tolist(), strict=True)]
        state: dict[str, Any] = {}
        if self.tokenizer is None:
            vocab, ids = self._word_ids(texts, ctx, vocab)
            size = len(vocab) + 2
            state["words"] = list(vocab)  # in id order: the ids are 2, 3, ... by insertion
        else:
            vocab = {}
            size, ids = self._pretrained_ids(texts)
            state["tokenizer"] = self.tokenizer
        values = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, row in enumerate(ids):
            row = row[:self.max_length]
            values[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        info = {"tokenizer": self.tokenizer, "special_tokens": self.special_tokens}
        return ReadResult(values, present, ModalitySpec(self.name, (self.max_length,), "tokens", vocab_size=size,
                                                        info=info),
                          learned(vocab=vocab, tokenizer=self.tokenizer), state)

    def _word_ids(self, texts: list[str], ctx: ReadContext,
                  vocab: dict[str, int] | None = None) -> tuple[dict[str, int], list[list[int]]]:
        """The vocabulary (word -> id) of the training split (or ``vocab``, given), and every text's ids."""
        tokens = [self.words(t) for t in texts]
        if vocab is not None:
            return vocab, [[vocab.get(w, UNK) for w in toks] for toks in tokens]
        train = ctx.train.tolist()
        counts = Counter(w for toks, tr in zip(tokens, train, strict=True) if tr for w in toks)
        # Most frequent first; ties in alphabetical order, so the vocabulary is deterministic.
        kept = sorted((w for w, c in counts.items() if c >= self.min_count), key=lambda w: (-counts[w], w))
        vocab = {w: i + 2 for i, w in enumerate(kept[:self.max_vocab])}
        if not vocab:
            raise ComponentError(f"column '{self.column}' has no word in the training split seen at least "
                                 f"min_count={self.min_count} times; lower min_count or check the column")
        return vocab, [[vocab.get(w, UNK) for w in toks] for toks in tokens]

    def _pretrained_ids(self, texts: list[str]) -> tuple[int, list[list[int]]]:
        """The vocabulary size (padding included) and every text's ids, from the pretrained tokenizer."""
        tok = load_tokenizer(str(self.tokenizer))
        ids = [list(encode(tok, t, self.special_tokens, self.max_length)) if t else [] for t in texts]
        return vocab_size(tok) + 1, [[i + 1 for i in row] for row in ids]  # shift by one: 0 stays padding


def load_tokenizer(name: str) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``.json`` file, or a local Hugging Face tokenizer by name.

    Raises:
        SettingError: about ``tokenizer``: not a file, not in the local cache, or its package is missing.
    """
    try:
        return _load_tokenizer(name)
    except SettingError:
        raise
    except UserError as e:  # a missing package (require): name the setting that needs it
        raise SettingError("tokenizer", f"'{name}': {e}") from None


def _load_tokenizer(name: str) -> Any:
    if name.endswith(".json"):
        path = Path(name).expanduser()
        if path.is_dir():
            raise SettingError("tokenizer", f"'{name}' is a directory; give a file, e.g. "
                               f"{KEY}.tokenizer={path / 'tokenizer.json'}")
        if not path.is_file():
            raise SettingError("tokenizer", f"is '{name}', which does not exist; give a tokenizer.json file or a "
                               "tokenizer name")
        tokenizers = require("tokenizers", "text", "a tokenizer.json file")
        return tokenizers.Tokenizer.from_file(str(path))
    transformers = require("transformers", "text", "a Hugging Face tokenizer name")
    try:
        return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SettingError("tokenizer", f"'{name}' is not in the local Hugging Face cache (nothing is downloaded at "
                           f"run time: {str(e).splitlines()[0][:100]}); use a tokenizer.json path or null") from None


def encode(tok: Any, text: str, special_tokens: bool = False, max_length: int | None = None) -> list[int]:
    """Token ids of ``text``, for either tokenizer type; with ``max_length``, truncated by the tokenizer (so the
    closing special token stays)."""
    if hasattr(tok, "encode_batch"):  # tokenizers.Tokenizer
        if max_length is not None and hasattr(tok, "enable_truncation"):
            tok.enable_truncation(max_length)
        ids = tok.encode(text, add_special_tokens=special_tokens).ids
        return ids if max_length is None else ids[:max_length]
    return tok.encode(text, add_special_tokens=special_tokens, truncation=max_length is not None,
                      max_length=max_length)


def vocab_size(tok: Any) -> int:
    """Number of ids the tokenizer can produce."""
    return tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else len(tok)
