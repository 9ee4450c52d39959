"""Audio files (WAV) -> log-mel spectrograms, or raw waveforms, at a fixed sample rate and length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data import augment as aug
from mtmm_train.data.audio import log_mel, mel_filterbank, read_wav, resample
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import SettingError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int16": torch.int16}


class AudioReader(ModalityReader):
    """A column of WAV paths -> ``(n_mels, max_frames)`` log-mel sequences, or ``(1, max_samples)`` waveforms.

    Each clip is mixed to mono and resampled to ``sample_rate``. With ``features: log_mel`` it is
    turned into a log-mel spectrogram standardised per clip, then cropped or zero-padded to
    ``max_frames``; with ``features: raw`` the waveform itself (floats in [-1, 1]) is cropped or
    zero-padded to ``max_samples``, for pretrained audio models that compute their own features
    (wav2vec2, HuBERT, Whisper; their encoder asks for it). The spec's ``info`` records
    ``sample_rate`` and ``features``, for the encoder to check.

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
        sample_rate: rate every clip is resampled to (Hz); null: 16000, or the encoder's model's rate.
        features: ``log_mel`` or ``raw``; null: ``log_mel``, or what the encoder asks for.
        max_samples: samples kept with ``features: raw``; null: ``max_frames * hop_length`` (the same duration).
        n_mels: mel bands (the sequence's channels).
        n_fft: FFT and window size in samples.
        hop_length: samples between frames.
        augment: train-time augmentation (``preset`` and settings, :mod:`mtmm_train.data.augment`): shift,
            gain, noise, time and frequency masks, on the log-mel sequence or on the waveform.
        max_frames: frames kept (the sequence's length).
        dtype: what each clip is stored and batched as: ``float32``; ``float16`` (half the memory and
            cache; about 3 significant digits); ``int16`` (``features: raw`` only: 16-bit PCM, lossless
            for 16-bit WAVs at their own rate). Encoders widen it to float32 on the device
            (:func:`mtmm_train.encoders.base.as_unit_float`).
    """

    reads_files = True

    def __init__(self, name: str, column: str | None = None, sample_rate: int | None = None, n_mels: int = 40,
                 n_fft: int = 400, hop_length: int = 160, max_frames: int = 100, features: str | None = None,
                 max_samples: int | None = None, augment: dict[str, Any] | None = None,
                 dtype: str = "float32") -> None:
        super().__init__(name, column)
        sample_rate = 16000 if sample_rate is None else sample_rate
        features = "log_mel" if features is None else features
        if features not in ("log_mel", "raw"):
            raise SettingError("features", f"must be log_mel or raw, found {features!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise SettingError("max_samples", f"must be a positive integer or null, found {max_samples!r}")
        for setting, value in (("sample_rate", sample_rate), ("n_mels", n_mels), ("n_fft", n_fft),
                               ("hop_length", hop_length), ("max_frames", max_frames)):
            if not isinstance(value, int) or value < 1:
                raise SettingError(setting, f"must be a positive integer, found {value!r}")
        if n_mels > n_fft // 2 + 1:
            raise SettingError("n_mels", f"must be at most n_fft // 2 + 1 = {n_fft // 2 + 1}, found {n_mels}; lower "
                               "n_mels or raise n_fft")
        self.sample_rate, self.n_mels, self.n_fft = sample_rate, n_mels, n_fft
        self.hop_length, self.max_frames = hop_length, max_frames
        self.raw = features == "raw"
        self.max_samples = max_samples or max_frames * hop_length
        self.filterbank = mel_filterbank(n_mels, n_fft, sample_rate)
        if dtype not in DTYPES:
            raise SettingError("dtype", f"must be one of {', '.join(DTYPES)}, found {dtype!r}")
        if dtype == "int16" and not self.raw:
            raise SettingError("dtype", "int16 holds waveforms (features: raw); a log-mel sequence is not in [-1, 1]: "
                               "use float16 or float32")
        self.dtype = DTYPES[dtype]
        self.augment = aug.settings_for("audio", augment)
        self.augment_device = aug.augment_device(augment)

    def features(self, wave: Tensor, rate: int) -> Tensor:
        """Waveform ``(T,)`` at ``rate`` -> ``(n_mels, max_frames)``, or ``(1, max_samples)`` when raw."""
        x = resample(wave, rate, self.sample_rate)
        if self.raw:
            out = torch.zeros(1, self.max_samples)
            n = min(self.max_samples, x.shape[-1])
            out[0, :n] = x[:n].clamp(-1.0, 1.0)
            return out
        mel = log_mel(x, self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.filterbank)
        out = torch.zeros(self.n_mels, self.max_frames)
        frames = min(self.max_frames, mel.shape[1])
        out[:, :frames] = mel[:, :frames]
        return out

    def decode(self, path: Path) -> Tensor:
        """Read one WAV file and compute its features, stored as ``dtype``."""
        wave, rate = read_wav(path)
        if wave.numel() == 0:
            raise ValueError("the file holds no samples")
        x = self.features(wave, rate)
        if self.dtype == torch.int16:
            return (x * 32768.0).round().clamp(-32768, 32767).to(torch.int16)
        return x.to(self.dtype)

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        clips = decode_files([resolve(ctx.root, cells[i]) for i in rows], self.decode, ctx, "WAV audio")
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, clips, strict=True):
            out[i] = x
        shape = (1, self.max_samples) if self.raw else (self.n_mels, self.max_frames)
        info = {"sample_rate": self.sample_rate, "features": "raw" if self.raw else "log_mel"}
        return ReadResult(*stack_present(out, shape, self.dtype), ModalitySpec(self.name, shape, "sequence", info=info))

    def augment_transform(self) -> aug.SampleTransform | None:
        """The train-time augmentation, wherever it runs (None: none)."""
        return aug.audio_transform(self.augment, "wave" if self.raw else "mel")

    def sample_transform(self, train: bool) -> aug.SampleTransform | None:
        """Training: the augmentation, per sample (unless ``augment.device=cuda``: per batch on the device)."""
        return self.augment_transform() if train and self.augment_device != "cuda" else None
