"""Bag-of-tokens encoder: mean of token embeddings (padding id ignored), then a projection."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, check_sizes
from mtmm_train.errors import KEY, SettingError
from mtmm_train.preprocessing import Preprocessing, check_same

#: Pretrained token embeddings this encoder can start from: name -> (package, weights file, tokenizer file).
PRETRAINED = {"wordllama": ("wordllama", "weights/l2_supercat_256.safetensors",
                            "tokenizers/l2_supercat_tokenizer_config.json")}


class EmbeddingBagEncoder(Encoder):
    """Mean of the embeddings of the non-padding tokens, then Linear + GELU.

    With ``pretrained: wordllama`` the table starts from WordLlama's 256-d token embeddings
    (``l2_supercat_256``, shipped with the ``wordllama`` package) and the text reader takes
    WordLlama's tokenizer (:meth:`preprocessing`); row ``i + 1`` of the table is the file's row ``i``,
    as the reader shifts ids by one (0 = padding).

    Args:
        modality: the modality spec (passed in by the recipe; needs ``vocab_size``).
        out_dim: output size D.
        embed_dim: embedding size; null: 64, or the pretrained table's width.
        padding_idx: the token id that means "no token".
        pretrained: null (random embeddings) or ``wordllama``.
    """

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, embed_dim: int | None = None, padding_idx: int = 0,
                 pretrained: str | None = None) -> None:
        super().__init__(modality, kinds=("tokens",))
        check_sizes(out_dim=out_dim, embed_dim=embed_dim)
        table = None
        if pretrained is not None:
            table = pretrained_table(pretrained)
            if embed_dim is not None and embed_dim != table.shape[1]:
                raise SettingError("embed_dim", f"is {embed_dim}, but the {pretrained} embeddings are "
                                   f"{table.shape[1]}-d; "
                                   f"set {KEY}.embed_dim=null")
            embed_dim = table.shape[1]
            tokenizer = str(pretrained_files(pretrained)[1])
            if modality.info.get("tokenizer", tokenizer) != tokenizer:
                check_same("tokenizer", modality.info["tokenizer"], tokenizer, f"model.encoders.{modality.name}",
                           f"{pretrained} embeddings")
            if modality.vocab_size and modality.vocab_size - 1 > table.shape[0]:
                check_same("tokenizer", modality.info.get("tokenizer"), f"{tokenizer} (ids below {table.shape[0]}, "
                           f"found {modality.vocab_size - 1})", f"model.encoders.{modality.name}", pretrained)
        embed_dim = embed_dim or 64
        self.out_dim = out_dim
        self.embed = nn.Embedding(modality.vocab_size, embed_dim, padding_idx=padding_idx)
        if table is not None:
            with torch.no_grad():
                rows = min(table.shape[0], modality.vocab_size - 1)
                self.embed.weight[1:rows + 1] = table[:rows]  # reader ids are the tokenizer's + 1
                self.embed.weight[padding_idx] = 0
        self.padding_idx = padding_idx
        self.proj = nn.Sequential(nn.Linear(embed_dim, out_dim), nn.GELU())

    @classmethod
    def preprocessing(cls, settings: dict[str, Any]) -> Preprocessing:
        """With pretrained embeddings, the reader uses their tokenizer (without special tokens)."""
        name = settings.get("pretrained")
        if name is None:
            return Preprocessing()
        return Preprocessing(tokenizer=str(pretrained_files(name)[1]), special_tokens=False, source=name)

    def forward(self, x: Tensor) -> Tensor:
        keep = (x != self.padding_idx).unsqueeze(-1)  # (B, L, 1)
        summed = self.embed(x).sum(1)  # padding rows of the table are zero
        return self.proj(summed / keep.sum(1).clamp_min(1))  # (B, D)

    def tokens(self, x: Tensor) -> Tensor:
        return self.proj(self.embed(x))  # (B, L, D)


def pretrained_files(name: str) -> tuple[Path, Path]:
    """The weights and tokenizer files of the pretrained embeddings ``name``, found in their installed package.

    Raises:
        SettingError: about ``pretrained``: an unknown name, or its package is not installed.
    """
    if name not in PRETRAINED:
        raise SettingError("pretrained", f"is {name!r}; choose one of {', '.join(PRETRAINED)} or null")
    package, weights, tokenizer = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SettingError("pretrained", f"is {name!r}, which needs the Python package '{package}', which is not "
                           f"installed; pip install {package}")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / weights, root / tokenizer


def pretrained_table(name: str) -> Tensor:
    """The ``(V, D)`` token embeddings of ``name`` (row i: the tokenizer's id i)."""
    from mtmm_train.encoders.pretrained import backbones

    st = backbones("safetensors.torch", f"pretrained={name}")
    tensors = st.load_file(str(pretrained_files(name)[0]))
    return next(t for t in tensors.values() if t.dim() == 2).float()
