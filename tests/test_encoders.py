"""Contract test over every encoder: pooled and token shapes, masks, gradients."""

from __future__ import annotations

import pytest
import torch

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders import CNNEncoder, Conv1dEncoder, EmbeddingBagEncoder, MLPEncoder, TransformerEncoder
from mtmm_train.errors import UserError

IMAGE = ModalitySpec("image", (1, 16, 16), "image")
AUDIO = ModalitySpec("audio", (2, 32), "sequence")
TEXT = ModalitySpec("text", (12,), "tokens", vocab_size=50)
TAB = ModalitySpec("tab", (7,), "vector")

CASES = [
    (MLPEncoder, TAB), (MLPEncoder, IMAGE), (CNNEncoder, IMAGE), (Conv1dEncoder, AUDIO), (EmbeddingBagEncoder, TEXT),
    (TransformerEncoder, TEXT), (TransformerEncoder, AUDIO),
]


def example(spec: ModalitySpec, batch: int = 5) -> torch.Tensor:
    if spec.kind == "tokens":
        x = torch.randint(1, spec.vocab_size, (batch, *spec.shape))
        x[0] = 0  # a missing text: all padding
        x[1, 6:] = 0
        return x
    return torch.randn(batch, *spec.shape)


@pytest.mark.parametrize(("cls", "spec"), CASES, ids=lambda c: getattr(c, "__name__", getattr(c, "name", "")))
def test_encoder_contract(cls: type, spec: ModalitySpec) -> None:
    torch.manual_seed(0)
    enc = cls(spec, out_dim=24)
    x = example(spec)
    pooled, tokens = enc(x), enc.tokens(x)
    assert pooled.shape == (5, 24) and enc.out_dim == 24
    assert tokens.dim() == 3 and tokens.shape[0] == 5 and tokens.shape[2] == 24
    assert torch.isfinite(pooled).all() and torch.isfinite(tokens).all()
    (pooled.sum() + tokens.sum()).backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None]
    assert unused in ([], ["pos"]) or all("pos" in n for n in unused)


def test_cnn_channels_last_gives_the_same_output() -> None:
    torch.manual_seed(0)
    a = CNNEncoder(IMAGE, out_dim=8).eval()
    b = CNNEncoder(IMAGE, out_dim=8, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = example(IMAGE)
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)


def test_padding_is_ignored_by_token_encoders() -> None:
    for cls in (EmbeddingBagEncoder, TransformerEncoder):
        torch.manual_seed(0)
        enc = cls(TEXT, out_dim=8).eval()
        x = torch.randint(1, 50, (1, 12))
        padded = torch.cat([x[:, :6], torch.zeros(1, 6, dtype=torch.long)], 1)
        # Same 6 tokens, with or without trailing padding (positions are the same for the first 6).
        torch.testing.assert_close(enc(x[:, :6]), enc(padded), rtol=1e-4, atol=1e-5)


def test_encoder_refuses_an_input_kind_it_cannot_read() -> None:
    with pytest.raises(UserError, match="model.encoders.tab: CNNEncoder reads image input"):
        CNNEncoder(TAB)
