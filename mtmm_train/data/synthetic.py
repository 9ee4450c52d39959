"""A built-in synthetic multi-modal, multi-task dataset that needs no download.

Four modalities of different kinds and four tasks of different types, generated from a few
latent factors so that results mean something:

* ``image`` (1, S, S): a bright blob in one of ``num_classes`` places (latent ``a``).
* ``audio`` (2, L): a noisy sine/cosine pair at one of ``num_classes`` frequencies (latent ``b``).
* ``text`` (L,) token ids: filler words, a token per tag the sample carries, and half of
  the time a hint token for ``a``.
* ``tabular`` (F,): Gaussian features.

Tasks:

* ``category`` (multiclass): ``a``; read from the image (the text hints half of the time).
* ``match`` (binary): ``a == b``; balanced, and each of image and audio alone carries no
  information about it, so only a model that fuses both modalities beats chance.
* ``tags`` (multilabel): which of ``num_tags`` tag tokens occur in the text.
* ``score`` (regression): a linear function of the tabular features plus a term in ``a``;
  labelled on ``label_fraction.score`` of the samples only (the sparse-label task).

Each modality of each sample is missing with probability ``missing_fraction`` (never all of
them), and every draw comes from one generator seeded by ``seed``.
"""

from __future__ import annotations

import math

import torch

from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.errors import check

FIRST_TAG_TOKEN = 2
FIRST_HINT_TOKEN = 20
FIRST_FILLER_TOKEN = 40


def synthetic(
    num_train: int = 4000,
    num_val: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    num_classes: int = 4,
    image_size: int = 16,
    audio_length: int = 32,
    text_length: int = 16,
    vocab_size: int = 64,
    num_tags: int = 5,
    tabular_dim: int = 12,
    noise: float = 0.5,
    missing_fraction: float = 0.1,
    label_fraction: dict[str, float] | None = None,
) -> MultiModalData:
    """Generate the dataset (see the module docstring).

    Args:
        num_train, num_val, num_test: samples per split.
        seed: seed of every random draw.
        num_classes: values of the latents ``a`` and ``b`` (classes of ``category``), 2..8.
        image_size: side of the square image.
        audio_length: time steps of the audio sequence.
        text_length: tokens per text.
        vocab_size: token ids, at least ``FIRST_FILLER_TOKEN + 1``.
        num_tags: labels of the ``tags`` task, 1..18.
        tabular_dim: tabular features, at least 2.
        noise: standard deviation of the Gaussian noise on image and audio.
        missing_fraction: probability that a modality of a sample is missing, in [0, 1).
        label_fraction: task -> fraction of samples that carry its label (default: all,
            except ``score``: 0.25).

    Returns:
        The data with splits ``train``, ``val`` and ``test``.

    Raises:
        UserError: on out-of-range arguments.
    """
    label_fraction = {"score": 0.25, **(label_fraction or {})}
    check(2 <= num_classes <= 8, f"dataset.num_classes must be in 2..8, found {num_classes}")
    check(1 <= num_tags <= FIRST_HINT_TOKEN - FIRST_TAG_TOKEN,
          f"dataset.num_tags must be in 1..{FIRST_HINT_TOKEN - FIRST_TAG_TOKEN}, found {num_tags}")
    check(vocab_size > FIRST_FILLER_TOKEN,
          f"dataset.vocab_size must be > {FIRST_FILLER_TOKEN}, found {vocab_size}")
    check(image_size >= 4 and audio_length >= 4 and text_length >= 4 and tabular_dim >= 2,
          "dataset.image_size, audio_length and text_length must be >= 4 and tabular_dim >= 2, found "
          f"{image_size}, {audio_length}, {text_length}, {tabular_dim}")
    check(0.0 <= missing_fraction < 1.0, f"dataset.missing_fraction must be in [0, 1), found {missing_fraction}")
    for split_name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        check(n > 0, f"dataset.{split_name} must be a positive number of samples, found {n}")
    tasks = ("category", "match", "tags", "score")
    for task, frac in label_fraction.items():
        check(task in tasks, f"dataset.label_fraction has unknown task '{task}'; tasks: {', '.join(tasks)}")
        check(0.0 < frac <= 1.0, f"dataset.label_fraction.{task} must be in (0, 1], found {frac}")

    g = torch.Generator().manual_seed(seed)
    n = num_train + num_val + num_test

    # Latents: a (image class), b (audio class), with a == b for half of the samples.
    a = torch.randint(num_classes, (n,), generator=g)
    same = torch.rand(n, generator=g) < 0.5
    shift = torch.randint(1, num_classes, (n,), generator=g)
    b = torch.where(same, a, (a + shift) % num_classes)

    # Image: a Gaussian blob at one of num_classes places on a circle.
    angle = 2 * math.pi * a.float() / num_classes
    radius = image_size / 4
    cy = image_size / 2 - 0.5 + radius * torch.sin(angle)
    cx = image_size / 2 - 0.5 + radius * torch.cos(angle)
    grid = torch.arange(image_size).float()
    dy = (grid.view(1, -1, 1) - cy.view(-1, 1, 1)) ** 2
    dx = (grid.view(1, 1, -1) - cx.view(-1, 1, 1)) ** 2
    sigma2 = 2 * (image_size / 8) ** 2
    image = torch.exp(-(dy + dx) / sigma2).unsqueeze(1)  # (N, 1, S, S)
    image = image + noise * torch.randn(image.shape, generator=g)

    # Audio: sine and cosine at frequency (b + 1) cycles per sequence, with a random phase.
    t = torch.arange(audio_length).float() / audio_length
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    arg = 2 * math.pi * (b.float().view(-1, 1) + 1) * t + phase  # (N, L)
    audio = torch.stack([torch.sin(arg), torch.cos(arg)], 1)  # (N, 2, L)
    audio = audio + noise * torch.randn(audio.shape, generator=g)

    # Text: filler, then tag tokens and (half of the time) a hint of a, at random positions.
    tags = (torch.rand(n, num_tags, generator=g) < 0.3).float()
    text = torch.randint(FIRST_FILLER_TOKEN, vocab_size, (n, text_length), generator=g)
    positions = torch.argsort(torch.rand(n, text_length, generator=g), dim=1)
    for k in range(num_tags):
        pos = positions[:, k]
        text[torch.arange(n), pos] = torch.where(tags[:, k] > 0, FIRST_TAG_TOKEN + k, text[torch.arange(n), pos])
    hint = torch.rand(n, generator=g) < 0.5
    pos = positions[:, num_tags % text_length]
    text[torch.arange(n), pos] = torch.where(hint, FIRST_HINT_TOKEN + a, text[torch.arange(n), pos])

    # Tabular features and the regression target.
    tabular = torch.randn(n, tabular_dim, generator=g)
    w = torch.randn(tabular_dim, generator=g)
    score = tabular @ w / w.norm() + (a.float() - (num_classes - 1) / 2) / math.sqrt(num_classes)
    score = score + 0.1 * torch.randn(n, generator=g)

    inputs = {"image": image, "audio": audio, "text": text, "tabular": tabular}
    targets = {"category": a, "match": (a == b).float(), "tags": tags, "score": score}

    # Missing modalities (never all of a sample's) and missing labels.
    present = torch.rand(n, len(inputs), generator=g) >= missing_fraction
    none = ~present.any(1)
    keep = torch.randint(len(inputs), (n,), generator=g)
    present[none, keep[none]] = True
    present_d = {m: present[:, i].clone() for i, m in enumerate(inputs)}
    for m, x in inputs.items():
        mask = present_d[m].view(-1, *([1] * (x.dim() - 1)))
        inputs[m] = torch.where(mask, x, torch.zeros((), dtype=x.dtype))
    labeled = {t: torch.rand(n, generator=g) < label_fraction.get(t, 1.0) for t in tasks}

    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val), "test": (num_train + num_val, n)}
    splits = {
        name: TensorSplit(
            {m: x[lo:hi] for m, x in inputs.items()},
            {m: p[lo:hi] for m, p in present_d.items()},
            {t: y[lo:hi] for t, y in targets.items()},
            {t: lab[lo:hi] for t, lab in labeled.items()},
        )
        for name, (lo, hi) in bounds.items()
    }
    modalities = {
        "image": ModalitySpec("image", (1, image_size, image_size), "image"),
        "audio": ModalitySpec("audio", (2, audio_length), "sequence"),
        "text": ModalitySpec("text", (text_length,), "tokens", vocab_size=vocab_size),
        "tabular": ModalitySpec("tabular", (tabular_dim,), "vector"),
    }
    task_specs = {
        "category": TaskSpec("category", "multiclass", num_classes),
        "match": TaskSpec("match", "binary", 1),
        "tags": TaskSpec("tags", "multilabel", num_tags),
        "score": TaskSpec("score", "regression", 1),
    }
    return MultiModalData(modalities, task_specs, splits)
