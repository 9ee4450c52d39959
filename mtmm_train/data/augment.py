"""Train-time augmentation: per-sample transforms whose random draws depend only on (seed, epoch, sample index).

A transform is a callable ``(x, generator) -> x`` on one sample: images ``(C, H, W)`` through
``torchvision.transforms.v2`` (random resized crop, flips, colour jitter, RandAugment or
TrivialAugment), audio ``(C, L)`` (random shift, gain, noise, SpecAugment-style time and frequency
masks, on a log-mel sequence or a raw waveform) and video ``(T, C, H, W)`` (a random choice of
frames, then the image operations, drawn once for the whole clip). The output keeps the input's
dtype (``uint8`` or ``[0, 1]`` floats for pixels): normalisation belongs to the encoder
(docs/design.md, "Preprocessing").

Settings come from a reader's ``augment`` node: a ``preset`` (``none``, ``light``, ``strong``; null:
the run's ``augment.preset``, filled in by :func:`apply_augment`) and any single setting over it
(``dataset.modalities.photo.augment.hflip=0.5``). Every draw comes from the generator passed in,
seeded by :func:`sample_generator` from ``(seed, epoch, index)`` only, so a resumed run sees the
same augmented samples as an uninterrupted one. torchvision draws from torch's global generator:
:class:`ImageOps` runs it under :func:`torch.random.fork_rng` on a seed taken from the sample's
generator, so the training RNG (dropout, shuffling) is left exactly as it was.

Where it runs (``augment.device``): ``cpu``, per sample where the data is decoded per sample
(the streamed files dataset, in DataLoader workers, through ``ModalityReader.sample_transform``);
``cuda``, per batch on the training device in the training loop (:class:`AugmentedLoader`). Data held
in memory (the default) is always augmented per batch on the training device, with the same draws.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from mtmm_train.batch import Batch
from mtmm_train.errors import SettingError, UserError

log = logging.getLogger("mtmm_train")

SampleTransform = Callable[[Tensor, torch.Generator], Tensor]

PRESETS = ("none", "light", "strong")
DEVICES = ("cpu", "cuda")
POLICIES = ("none", "randaugment", "trivialaugment")
KINDS = ("image", "audio", "video")

# Every setting of each kind, at its "off" value (the preset none).
IMAGE_SETTINGS: dict[str, Any] = {
    "hflip": 0.0,                    # probability of a horizontal flip
    "vflip": 0.0,                    # probability of a vertical flip
    "crop_scale": None,              # [min, max] area fraction of a random resized crop (null: no crop)
    "crop_ratio": [0.75, 1.3333],    # aspect-ratio range of that crop
    "color_jitter": None,            # brightness, contrast and saturation strength (a number or [b, c, s, hue])
    "policy": "none",                # none | randaugment | trivialaugment
    "num_ops": 2,                    # randaugment: operations per sample
    "magnitude": 9,                  # randaugment: strength, 0-30
}
AUDIO_SETTINGS: dict[str, Any] = {
    "shift": 0.0,        # random shift, at most this fraction of the length (zero-filled)
    "gain_db": 0.0,      # random gain within +-gain_db decibels
    "noise": 0.0,        # Gaussian noise, std (waveform) or std in log-mel units
    "time_mask": 0.0,    # each time mask spans at most this fraction of the length
    "time_masks": 2,     # time masks per sample
    "freq_mask": 0.0,    # each frequency mask spans at most this fraction of the bands (waveform: of the spectrum)
    "freq_masks": 2,     # frequency masks per sample
}
SETTINGS = {"image": IMAGE_SETTINGS, "audio": AUDIO_SETTINGS, "video": IMAGE_SETTINGS}

PRESET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {"image": {}, "audio": {}, "video": {}},
    "light": {
        "image": {"hflip": 0.5, "crop_scale": [0.5, 1.0], "color_jitter": 0.2},
        "audio": {"shift": 0.1, "gain_db": 3.0, "time_mask": 0.05, "time_masks": 1, "freq_mask": 0.05,
                  "freq_masks": 1},
        "video": {"hflip": 0.5, "crop_scale": [0.5, 1.0], "color_jitter": 0.2},
    },
    "strong": {
        "image": {"hflip": 0.5, "crop_scale": [0.08, 1.0], "color_jitter": 0.4, "policy": "trivialaugment"},
        "audio": {"shift": 0.2, "gain_db": 6.0, "noise": 0.01, "time_mask": 0.1, "time_masks": 2,
                  "freq_mask": 0.15, "freq_masks": 2},
        "video": {"hflip": 0.5, "crop_scale": [0.25, 1.0], "color_jitter": 0.4},
    },
}


# ---------------------------------------------------------------------- settings
def settings_for(kind: str, augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """A reader's complete augmentation settings: its preset, then its own settings over it.

    Args:
        kind: ``image``, ``audio`` or ``video``.
        augment: the reader's ``augment`` node: ``preset`` (null: none), ``device``, and settings.

    Raises:
        SettingError: an unknown preset or setting, or a value out of its range (named ``augment.<key>``).
    """
    given = dict(OmegaConf.to_container(augment, resolve=True) if OmegaConf.is_config(augment) else augment or {})
    given = {k: v for k, v in given.items() if v is not None}  # null: the preset's value
    preset = given.pop("preset", None) or "none"
    device = given.pop("device", None) or "cpu"
    if preset not in PRESETS:
        raise SettingError("augment.preset", f"must be one of {', '.join(PRESETS)}, found {preset!r}")
    if device not in DEVICES:
        raise SettingError("augment.device", f"must be one of {', '.join(DEVICES)}, found {device!r}")
    known = SETTINGS[kind]
    unknown = [k for k in given if k not in known]
    if unknown:
        raise SettingError(f"augment.{unknown[0]}", f"is not an augmentation setting of {kind} readers; they are "
                           f"preset, device, {', '.join(known)}")
    out = {**known, **PRESET_SETTINGS[preset][kind], **given}
    check_settings(kind, out)
    return out


def check_settings(kind: str, s: dict[str, Any]) -> None:
    """Refuse values out of range, naming the setting (``augment.hflip must be ...``)."""

    def fail(key: str, must: str) -> None:
        raise SettingError(f"augment.{key}", f"must be {must}, found {s[key]!r}")

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if kind in ("image", "video"):
        for key in ("hflip", "vflip"):
            if not (number(s[key]) and 0 <= s[key] <= 1):
                fail(key, "a probability in [0, 1]")
        for key, low in (("crop_scale", 0), ("crop_ratio", 0)):
            v = s[key]
            if v is not None and not (isinstance(v, list | tuple) and len(v) == 2 and all(number(a) for a in v)
                                      and low < v[0] <= v[1] and (key != "crop_scale" or v[1] <= 1)):
                fail(key, "[min, max] with 0 < min <= max" + (" <= 1" if key == "crop_scale" else "") + " or null")
        jitter = s["color_jitter"]
        values = jitter if isinstance(jitter, list | tuple) else [jitter]
        if jitter is not None and not (len(values) in (1, 4) and all(number(v) and v >= 0 for v in values)
                                       and (len(values) == 1 or values[3] <= 0.5)):
            fail("color_jitter", "a strength >= 0, [brightness, contrast, saturation, hue] (hue <= 0.5) or null")
        if s["policy"] not in POLICIES:
            fail("policy", f"one of {', '.join(POLICIES)}")
        if not (isinstance(s["num_ops"], int) and s["num_ops"] >= 1):
            fail("num_ops", "an integer >= 1")
        if not (isinstance(s["magnitude"], int) and 0 <= s["magnitude"] <= 30):
            fail("magnitude", "an integer in [0, 30]")
    else:
        for key in ("shift", "time_mask", "freq_mask"):
            if not (number(s[key]) and 0 <= s[key] <= 1):
                fail(key, "a fraction in [0, 1]")
        for key in ("gain_db", "noise"):
            if not (number(s[key]) and s[key] >= 0):
                fail(key, "a number >= 0")
        for key in ("time_masks", "freq_masks"):
            if not (isinstance(s[key], int) and s[key] >= 0):
                fail(key, "an integer >= 0")


def augment_device(augment: Mapping[str, Any] | None) -> str:
    """Where a reader's augmentation runs: ``cpu`` (per sample) or ``cuda`` (per batch, on the device)."""
    return str((augment or {}).get("device") or "cpu")


# ---------------------------------------------------------------------- random draws
def sample_generator(seed: int, epoch: int | None, row: int, modality: str = "") -> torch.Generator:
    """The generator of one sample's draws: seeded by ``(seed, epoch, manifest row, modality)`` only
    (:func:`mtmm_train.data.base.sample_seed`, as the per-sample path seeds it)."""
    from mtmm_train.data.base import sample_seed

    return torch.Generator().manual_seed(sample_seed(seed, epoch, row, modality))


def uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    """One float in ``[low, high)`` from ``gen``."""
    return low + (high - low) * float(torch.rand((), generator=gen))


class ImageOps:
    """torchvision v2 image operations as a sample transform; one draw per call, from the sample's generator.

    Works on ``(C, H, W)`` and on ``(T, C, H, W)`` (one draw for all ``T`` frames), ``uint8`` or
    floats, on any device; the output has the input's shape and dtype.
    """

    def __init__(self, settings: dict[str, Any], size: tuple[int, int]) -> None:
        from mtmm_train.data.optional import require

        v2 = require("torchvision.transforms.v2", "backbones", "image augmentation", package="torchvision")
        s = settings
        ops: list[Any] = []
        if s["crop_scale"] is not None:
            ops.append(v2.RandomResizedCrop(tuple(size), scale=tuple(s["crop_scale"]), ratio=tuple(s["crop_ratio"]),
                                            antialias=True))
        if s["hflip"] > 0:
            ops.append(v2.RandomHorizontalFlip(s["hflip"]))
        if s["vflip"] > 0:
            ops.append(v2.RandomVerticalFlip(s["vflip"]))
        jitter = s["color_jitter"]
        if jitter is not None:
            b, c, sat, hue = (jitter, jitter, jitter, 0.0) if not isinstance(jitter, list | tuple) else \
                (list(jitter) * 4)[:4] if len(jitter) == 1 else jitter
            if any((b, c, sat, hue)):
                ops.append(v2.ColorJitter(brightness=b, contrast=c, saturation=sat, hue=hue))
        if s["policy"] == "randaugment":
            ops.append(v2.RandAugment(num_ops=s["num_ops"], magnitude=s["magnitude"]))
        elif s["policy"] == "trivialaugment":
            ops.append(v2.TrivialAugmentWide())
        self.ops = v2.Compose(ops) if ops else None

    def __bool__(self) -> bool:
        return self.ops is not None

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.ops is None:
            return x
        seed = int(torch.randint(2 ** 62, (), generator=gen))
        # torchvision draws from the global CPU generator: draw from a copy seeded by this sample only,
        # and give the training RNG back untouched (devices=[]: the CUDA generators are not involved).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.ops(x)


class AudioOps:
    """Shift, gain, noise and time/frequency masks on one ``(C, L)`` sample, drawn from its generator.

    Args:
        settings: complete audio settings (:func:`settings_for`).
        layout: ``mel`` (``C`` mel bands, ``L`` frames; gain and noise in log units) or ``wave``
            (``C`` channels, ``L`` samples; frequency masks zero a band of the spectrum).
    """

    def __init__(self, settings: dict[str, Any], layout: str) -> None:
        if layout not in ("mel", "wave"):
            raise ValueError(f"layout must be mel or wave, found {layout!r}")
        self.s, self.layout = dict(settings), layout

    def __bool__(self) -> bool:
        s = self.s
        return bool(s["shift"] or s["gain_db"] or s["noise"] or (s["time_mask"] and s["time_masks"])
                    or (s["freq_mask"] and s["freq_masks"]))

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        s, dtype = self.s, x.dtype
        y = x.float() / 32768.0 if dtype == torch.int16 else x.float()
        length = y.shape[-1]
        if s["shift"]:
            most = int(s["shift"] * length)
            k = int(torch.randint(-most, most + 1, (), generator=gen)) if most else 0
            if k:
                y = torch.roll(y, k, -1)
                if k > 0:
                    y[..., :k] = 0
                else:
                    y[..., k:] = 0
        if s["gain_db"]:
            db = uniform(gen, -s["gain_db"], s["gain_db"])
            # waveform: amplitude x 10^(dB/20); log-mel (natural log of power): + dB * ln(10) / 10
            y = y * 10 ** (db / 20) if self.layout == "wave" else y + db * math.log(10) / 10
        if s["noise"]:
            noise = torch.randn(y.shape, generator=gen).to(y.device)
            y = y + s["noise"] * noise
        if s["freq_mask"] and s["freq_masks"]:
            y = self.freq_masks(y, gen)
        if s["time_mask"] and s["time_masks"]:
            y = mask_spans(y, -1, s["time_mask"], s["time_masks"], gen)
        if self.layout == "wave":
            y = y.clamp(-1.0, 1.0)
        if dtype == torch.int16:
            return (y * 32768.0).round().clamp(-32768, 32767).to(torch.int16)
        return y.to(dtype)

    def freq_masks(self, y: Tensor, gen: torch.Generator) -> Tensor:
        s = self.s
        if self.layout == "mel":
            return mask_spans(y, -2, s["freq_mask"], s["freq_masks"], gen)
        spectrum = torch.fft.rfft(y, dim=-1)
        spectrum = mask_spans(spectrum, -1, s["freq_mask"], s["freq_masks"], gen)
        return torch.fft.irfft(spectrum, n=y.shape[-1], dim=-1)


def mask_spans(y: Tensor, dim: int, fraction: float, count: int, gen: torch.Generator) -> Tensor:
    """Zero ``count`` spans of ``y`` along ``dim``, each of a width drawn in ``[0, fraction * size]``."""
    size = y.shape[dim]
    most = int(fraction * size)
    if most < 1:
        return y
    y = y.clone()
    for _ in range(count):
        width = int(torch.randint(0, most + 1, (), generator=gen))
        start = int(torch.randint(0, size - width + 1, (), generator=gen))
        if width:
            y.narrow(dim, start, width).zero_()
    return y


def frame_indices(available: int, frames: int, gen: torch.Generator | None) -> Tensor:
    """Which of ``available`` frames to keep: one from each of ``frames`` equal segments, in order.

    With a generator (training) a random frame of each segment; without (evaluation) the segment's
    middle frame, i.e. frames spread uniformly over the clip. Fewer frames than asked repeat frames.
    """
    edges = torch.linspace(0, available, frames + 1, dtype=torch.float64)
    low, high = edges[:-1], edges[1:]
    if gen is None:
        pos = (low + high) / 2
    else:
        pos = low + (high - low) * torch.rand(frames, generator=gen, dtype=torch.float64)
    return pos.floor().long().clamp(0, available - 1)


class VideoOps:
    """A clip of ``frames * pool`` evenly spaced frames ``(P, C, H, W)`` -> the same shape, holding ``frames``
    chosen frames, each repeated ``pool`` times (an encoder reads every ``pool``-th frame).

    Training (``train=True``) chooses a random frame of each of ``frames`` segments and draws the image
    operations once for the whole clip; evaluation chooses each segment's middle frame, nothing else.
    """

    def __init__(self, settings: dict[str, Any] | None, size: tuple[int, int], frames: int, pool: int,
                 train: bool) -> None:
        self.frames, self.pool, self.train = frames, pool, train
        self.image = ImageOps(settings, size) if train and settings is not None and has_image_ops(settings) else None

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.pool > 1:
            chosen = frame_indices(x.shape[0], self.frames, gen if self.train else None)
            x = x.index_select(0, chosen.repeat_interleave(self.pool).to(x.device))
        if self.image:
            x = self.image(x, gen)
        return x


def image_transform(settings: dict[str, Any], size: tuple[int, int]) -> SampleTransform | None:
    """The image transform of complete settings, or None when they do nothing."""
    ops = ImageOps(settings, size) if has_image_ops(settings) else None
    return ops if ops else None


def audio_transform(settings: dict[str, Any], layout: str) -> SampleTransform | None:
    """The audio transform of complete settings (``layout`` ``mel`` or ``wave``), or None when they do nothing."""
    ops = AudioOps(settings, layout)
    return ops if ops else None


def has_image_ops(s: dict[str, Any]) -> bool:
    """Whether image settings change anything."""
    jitter = s["color_jitter"]
    return bool(s["crop_scale"] is not None or s["hflip"] or s["vflip"] or s["policy"] != "none"
                or (jitter is not None and any(jitter if isinstance(jitter, list | tuple) else [jitter])))


# ---------------------------------------------------------------------- per batch, on the device
def augment_batch(x: Tensor, present: Tensor, rows: Tensor, transform: SampleTransform, seed: int,
                  epoch: int, modality: str = "") -> Tensor:
    """Apply ``transform`` to each sample of a batch where the batch lies (e.g. on the GPU), with the draws of
    the per-sample path: the sample of manifest row ``rows[j]`` gets :func:`sample_generator`
    ``(seed, epoch, rows[j])``.

    Absent samples stay zeros. Reads ``rows`` on the host (one copy per batch if they are on the device).
    """
    out = torch.stack([transform(x[j], sample_generator(seed, epoch, r, modality))
                       for j, r in enumerate(rows.tolist())])
    keep = present.to(out.device).view(-1, *([1] * (out.dim() - 1)))
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))


class BatchAugment:
    """The train-time transforms of a run's modalities, applied per batch (:func:`augment_batch`).

    Args:
        transforms: modality -> its train-time sample transform.
        seed: the run's seed.
    """

    def __init__(self, transforms: dict[str, SampleTransform], seed: int) -> None:
        self.transforms, self.seed = transforms, seed

    def __call__(self, batch: Batch, rows: Tensor, epoch: int) -> Batch:
        """The batch with its modalities augmented (``rows``: the manifest row of each sample)."""
        inputs = dict(batch.inputs)
        for m, t in self.transforms.items():
            inputs[m] = augment_batch(inputs[m], batch.present[m], rows, t, self.seed, epoch, m)
        return Batch(inputs, batch.present, batch.targets, batch.labeled)


class AugmentedLoader:
    """Wraps a training loader (``epoch(e, start)``) and augments each batch by its samples' indices.

    The sample indices come from the loader's order (``InMemoryLoader.indices``; a
    ``StreamingLoader`` keeps that order as ``.index``), which depends only on ``(seed, epoch)``.
    """

    def __init__(self, loader: Any, augment: BatchAugment) -> None:
        self.loader, self.augment = loader, augment
        self.order = getattr(loader, "index", loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # batch_size, split, ... of the wrapped loader
        return getattr(self.__dict__["loader"], name)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The wrapped loader's batches of ``epoch`` from batch ``start`` on, augmented."""
        split = self.order.split
        rows = getattr(getattr(split, "tensors", split), "rows", None)  # a FileSplit keeps them in .tensors
        for batch, index in zip(self.loader.epoch(epoch, start), self.order.indices(epoch, start), strict=True):
            index = index.cpu()
            yield self.augment(batch, index if rows is None else rows.index_select(0, index), epoch)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


# ---------------------------------------------------------------------- the run's config
def apply_augment(cfg: DictConfig) -> list[str]:
    """Give each reader that takes augmentation (one with an ``augment`` setting) the run's preset and device.

    A reader's own ``augment.preset`` or ``augment.device`` wins; ``augment.preset`` and
    ``augment.device`` (the ``augment`` config group) fill the rest, in place.

    Returns:
        The modalities whose reader takes augmentation.

    Raises:
        UserError: an unknown ``augment.preset`` or ``augment.device``.
    """
    run = OmegaConf.select(cfg, "augment")
    preset = OmegaConf.select(cfg, "augment.preset", default="none") if run is not None else "none"
    device = OmegaConf.select(cfg, "augment.device", default="cpu") if run is not None else "cpu"
    if preset not in PRESETS:
        raise UserError(f"augment.preset must be one of {', '.join(PRESETS)}, found {preset!r}; e.g. augment=light")
    if device not in DEVICES:
        raise UserError(f"augment.device must be one of {', '.join(DEVICES)}, found {device!r}; cpu: per sample "
                        "where decoded, cuda: per batch on the training device")
    modalities = OmegaConf.select(cfg, "dataset.modalities")
    takers = []
    if isinstance(modalities, DictConfig):
        for name, reader in modalities.items():
            if not isinstance(reader, DictConfig) or "augment" not in reader:
                continue
            with open_dict(reader):
                if reader.augment is None:
                    reader.augment = {}
                if not isinstance(reader.augment, DictConfig):
                    raise UserError(f"dataset.modalities.{name}.augment must be a mapping of settings, found "
                                    f"{reader.augment!r}; e.g. dataset.modalities.{name}.augment.preset=light")
                if reader.augment.get("preset") is None:
                    reader.augment.preset = preset
                if reader.augment.get("device") is None:
                    reader.augment.device = device
            takers.append(str(name))
    if preset != "none" and not takers:
        log.warning("augment=%s: no reader of this dataset takes augmentation (image, audio and video readers of "
                    "dataset=files do); nothing is augmented", preset)
    return takers


def batch_augment(cfg: DictConfig, data: Any, seed: int) -> BatchAugment | None:
    """The per-batch augmentation of a run's training split (``augment.device=cuda``), or None.

    Modalities whose reader's ``augment.device`` is ``cuda`` are augmented per batch on the training
    device (their readers' ``sample_transform`` returns None); the others, where the split decodes or
    gathers each sample (``ModalityReader.sample_transform``).
    """
    from mtmm_train.instantiate import build  # local: instantiate imports the registry

    transforms = {}
    for m in getattr(data, "modalities", {}):
        node = OmegaConf.select(cfg, f"dataset.modalities.{m}")
        if not isinstance(node, DictConfig) or "_target_" not in node or "augment" not in node \
                or augment_device(node.augment) != "cuda":
            continue
        reader = build(node, f"dataset.modalities.{m}", name=m)
        transform = reader.augment_transform() if hasattr(reader, "augment_transform") else None
        if transform is not None:
            transforms[m] = transform
    if not transforms:
        return None
    log.info("augment: %s augmented per batch on the training device (draws from seed, epoch and manifest row)",
             ", ".join(transforms))
    return BatchAugment(transforms, seed)
