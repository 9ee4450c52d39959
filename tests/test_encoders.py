"""Contract test over every encoder: pooled and token shapes, masks, gradients.

The encoders come from ``mtmm_train/encoders/`` (tests/families.py), each tried on a modality of
every kind: the cases are the pairs it accepts.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from families import FAMILIES, classes
from tiny_backbones import bert_folder

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders import CNNEncoder
from mtmm_train.encoders.base import SUGGESTED
from mtmm_train.errors import ComponentError, UserError
from mtmm_train.instantiate import located

IMAGE = ModalitySpec("image", (1, 16, 16), "image")
AUDIO = ModalitySpec("audio", (2, 32), "sequence")
TEXT = ModalitySpec("text", (12,), "tokens", vocab_size=50)
TAB = ModalitySpec("tab", (7,), "vector")
VIDEO = ModalitySpec("clip", (4, 1, 16, 16), "video", info={"frames": 2, "pool": 2})
SPECS = {s.kind: s for s in (IMAGE, AUDIO, TEXT, TAB, VIDEO)}
ENCODERS = list(classes(FAMILIES["encoder"]).values())
# Settings that build a member offline (a pretrained backbone's defaults name a model to download): tiny models.
OFFLINE = {"TimmEncoder": {"model_name": "test_vit", "pretrained": False},
           "HFEncoder": {"model_name": str(bert_folder(Path(tempfile.mkdtemp(prefix="mtmm-tiny-bert-"))))}}


def make(cls: type, spec: ModalitySpec, **settings: object) -> torch.nn.Module:
    """``cls(spec, **settings)``, with the member's :data:`OFFLINE` settings."""
    return cls(spec, **OFFLINE.get(cls.__name__, {}), **settings)


def reads(cls: type, spec: ModalitySpec) -> bool:
    """Whether ``cls`` accepts ``spec`` (it refuses the others with a ComponentError)."""
    try:
        make(cls, spec)
    except ComponentError:
        return False
    return True


CASES = [(cls, spec) for cls in ENCODERS for spec in SPECS.values() if reads(cls, spec)]
TOKEN_ENCODERS = [cls for cls in ENCODERS if reads(cls, TEXT)]


def test_every_kind_is_read_by_some_encoder_and_every_encoder_reads_some_kind() -> None:
    assert set(SPECS) == set(SUGGESTED)  # a spec of every kind an encoder may meet
    assert {s.kind for _, s in CASES} == set(SPECS)
    assert {c for c, _ in CASES} == set(ENCODERS)


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
    dim = math.prod(spec.shape) if cls.__name__ == "IdentityEncoder" else 24  # its size is its input's
    enc = make(cls, spec, out_dim=dim)
    x = example(spec)
    pooled, tokens = enc(x), enc.tokens(x)
    assert pooled.shape == (5, dim) and enc.out_dim == dim
    assert tokens.dim() == 3 and tokens.shape[0] == 5 and tokens.shape[2] == dim
    assert torch.isfinite(pooled).all() and torch.isfinite(tokens).all()
    if not list(enc.parameters()):  # IdentityEncoder: nothing to train
        return
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
    assert TOKEN_ENCODERS
    for cls in TOKEN_ENCODERS:
        torch.manual_seed(0)
        enc = make(cls, TEXT, out_dim=8).eval()
        x = torch.randint(1, 50, (1, 12))
        padded = torch.cat([x[:, :6], torch.zeros(1, 6, dtype=torch.long)], 1)
        # Same 6 tokens, with or without trailing padding (positions are the same for the first 6).
        torch.testing.assert_close(enc(x[:, :6]), enc(padded), rtol=1e-4, atol=1e-5)


def test_encoder_refuses_an_input_kind_it_cannot_read() -> None:
    # A plain ValueError that does not know where the encoder sits in the config ...
    with pytest.raises(ValueError, match=r"^CNNEncoder reads image input, but modality 'tab' is vector"):
        CNNEncoder(TAB)
    # ... and the key in front once the builder (here: located) knows it, with a fix to copy.
    with pytest.raises(UserError, match=r"^model\.encoders\.tab: CNNEncoder reads image input, .*e\.g\. "
                                        r"encoder@model\.encoders\.tab=mlp$"), located("model.encoders.tab"):
        CNNEncoder(TAB)


@pytest.mark.parametrize("cls", ENCODERS, ids=lambda c: c.__name__)
def test_a_size_below_one_is_refused_naming_the_setting(cls: type) -> None:
    spec = next(s for c, s in CASES if c is cls)
    with pytest.raises(ValueError, match=r"^out_dim must be a size >= 1, found 0") as e:
        make(cls, spec, out_dim=0)
    assert e.value.at("model.encoders.x").startswith("model.encoders.x.out_dim must be a size >= 1, found 0; ")
