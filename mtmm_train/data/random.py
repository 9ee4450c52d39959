"""Random tensors shaped like the reference models' inputs (for benchmarks, not learning).

The reference models (``experiment=reference_small``, ``experiment=reference_large``) read an RGB
image, a token sequence and a feature vector; tasks: 10-class, binary and regression targets,
all drawn independently.
"""

from __future__ import annotations

import torch

from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.errors import check


def random_reference(num_train: int = 4096, num_val: int = 512, seed: int = 0, image_size: int = 64,
                     text_length: int = 64, vocab_size: int = 10000, vector_dim: int = 128,
                     num_classes: int = 10) -> MultiModalData:
    """Random inputs ``image (3, S, S)``, ``text (L,)``, ``vector (F,)``; tasks ``cls``, ``bin``, ``reg``.

    Args:
        num_train, num_val: samples per split.
        seed: seed of the draws.
        image_size, text_length, vocab_size, vector_dim, num_classes: the shapes.
    """
    check(num_train > 0 and num_val > 0, f"dataset.num_train and num_val must be > 0, found {num_train}, {num_val}")
    g = torch.Generator().manual_seed(seed)
    n = num_train + num_val
    inputs = {
        "image": torch.randn(n, 3, image_size, image_size, generator=g),
        "text": torch.randint(1, vocab_size, (n, text_length), generator=g),
        "vector": torch.randn(n, vector_dim, generator=g),
    }
    targets = {
        "cls": torch.randint(num_classes, (n,), generator=g),
        "bin": torch.randint(2, (n,), generator=g).float(),
        "reg": torch.randn(n, generator=g),
    }
    ones = torch.ones(n, dtype=torch.bool)

    def split(lo: int, hi: int) -> TensorSplit:
        return TensorSplit({m: x[lo:hi] for m, x in inputs.items()}, {m: ones[lo:hi] for m in inputs},
                           {t: y[lo:hi] for t, y in targets.items()}, {t: ones[lo:hi] for t in targets})

    return MultiModalData(
        {"image": ModalitySpec("image", (3, image_size, image_size), "image"),
         "text": ModalitySpec("text", (text_length,), "tokens", vocab_size=vocab_size),
         "vector": ModalitySpec("vector", (vector_dim,), "vector")},
        {"cls": TaskSpec("cls", "multiclass", num_classes), "bin": TaskSpec("bin", "binary", 1),
         "reg": TaskSpec("reg", "regression", 1)},
        {"train": split(0, num_train), "val": split(num_train, n)},
    )
