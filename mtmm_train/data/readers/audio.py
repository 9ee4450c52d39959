"""Audio files (WAV) -> log-mel spectrograms at a fixed sample rate and length."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.audio import log_mel, mel_filterbank, read_wav, resample
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import SettingError


class AudioReader(ModalityReader):
    """A column of WAV paths -> ``(n_mels, max_frames)`` log-mel sequences.

    Each clip is mixed to mono, resampled to ``sample_rate``, turned into a log-mel
    spectrogram standardised per clip, then cropped or zero-padded to ``max_frames``.

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
        sample_rate: rate every clip is resampled to (Hz).
        n_mels: mel bands (the sequence's channels).
        n_fft: FFT and window size in samples.
        hop_length: samples between frames.
        max_frames: frames kept (the sequence's length).
    """

    reads_files = True

    def __init__(self, name: str, column: str | None = None, sample_rate: int = 16000, n_mels: int = 40,
                 n_fft: int = 400, hop_length: int = 160, max_frames: int = 100) -> None:
        super().__init__(name, column)
        for setting, value in (("sample_rate", sample_rate), ("n_mels", n_mels), ("n_fft", n_fft),
                               ("hop_length", hop_length), ("max_frames", max_frames)):
            if not isinstance(value, int) or value < 1:
                raise SettingError(setting, f"must be a positive integer, found {value!r}")
        if n_mels > n_fft // 2 + 1:
            raise SettingError("n_mels", f"must be at most n_fft // 2 + 1 = {n_fft // 2 + 1}, found {n_mels}; lower "
                               "n_mels or raise n_fft")
        self.sample_rate, self.n_mels, self.n_fft = sample_rate, n_mels, n_fft
        self.hop_length, self.max_frames = hop_length, max_frames
        self.filterbank = mel_filterbank(n_mels, n_fft, sample_rate)

    def features(self, wave: Tensor, rate: int) -> Tensor:
        """Waveform ``(T,)`` at ``rate`` -> ``(n_mels, max_frames)``."""
        x = resample(wave, rate, self.sample_rate)
        mel = log_mel(x, self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.filterbank)
        out = torch.zeros(self.n_mels, self.max_frames)
        frames = min(self.max_frames, mel.shape[1])
        out[:, :frames] = mel[:, :frames]
        return out

    def decode(self, path: Path) -> Tensor:
        """Read one WAV file and compute its features."""
        wave, rate = read_wav(path)
        if wave.numel() == 0:
            raise ValueError("the file holds no samples")
        return self.features(wave, rate)

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        clips = decode_files([resolve(ctx.root, cells[i]) for i in rows], self.decode, ctx, "WAV audio")
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, clips, strict=True):
            out[i] = x
        shape = (self.n_mels, self.max_frames)
        return ReadResult(*stack_present(out, shape), ModalitySpec(self.name, shape, "sequence"))
