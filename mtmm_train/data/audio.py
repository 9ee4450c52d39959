"""Audio preprocessing in torch: WAV reading, band-limited resampling, log-mel spectrograms.

Written with torch and numpy only (no torchaudio), so it runs wherever torch does.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtmm_train.data.optional import require

__all__ = ["log_mel", "mel_filterbank", "read_wav", "resample"]


def read_wav(path: Path) -> tuple[Tensor, int]:
    """Read a WAV file as a mono float waveform in [-1, 1].

    PCM (8/16/24/32-bit) is read with the standard library; float WAVs need scipy.

    Returns:
        ``(wave (T,), sample_rate)``; several channels are averaged.

    Raises:
        OSError, ValueError, EOFError, wave.Error: the file is not a readable WAV.
    """
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except wave.Error as e:
        if "unknown format: 3" not in str(e):  # 3 = IEEE float, which the wave module does not read
            raise
        wavfile = require("scipy.io.wavfile", "data", "reading a float WAV file", package="scipy")
        rate, data = wavfile.read(str(path))
        x = torch.from_numpy(np.asarray(data, dtype=np.float32))
        return (x.mean(1) if x.dim() == 2 else x), int(rate)
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit: assemble little-endian triples into int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype).astype(np.float32) / float(np.iinfo(dtype).max + 1)
    else:
        raise ValueError(f"unsupported sample width of {width} bytes")
    x = torch.from_numpy(x.reshape(-1, channels).copy()).mean(1)
    return x, rate


def resample(x: Tensor, rate_in: int, rate_out: int) -> Tensor:
    """Band-limited resampling of ``x`` ``(T,)`` by truncating or zero-padding its spectrum.

    Exact for band-limited periodic signals; frequencies above the new Nyquist rate are cut
    (no aliasing), which is what a spectrogram downstream needs.
    """
    if rate_in == rate_out or x.numel() == 0:
        return x
    n_in = x.shape[-1]
    n_out = max(1, round(n_in * rate_out / rate_in))
    spec = torch.fft.rfft(x.double())
    keep = min(spec.shape[-1], n_out // 2 + 1)
    out = torch.zeros(n_out // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=n_out) * (n_out / n_in)).float()


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular filters equally spaced on the HTK mel scale.

    Returns:
        ``(n_fft // 2 + 1, n_mels)``: weight of each FFT bin in each mel band.
    """
    f_max = f_max or sample_rate / 2

    def mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def hz(m: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = hz(torch.linspace(float(mel(torch.tensor(f_min))), float(mel(torch.tensor(f_max))), n_mels + 2,
                              dtype=torch.float64))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # (M,)
    up = (bins[:, None] - lo) / (mid - lo)  # (F, M)
    down = (hi - bins[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel(x: Tensor, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
            filterbank: Tensor | None = None) -> Tensor:
    """Log-mel spectrogram of waveforms, standardised per clip.

    Args:
        x: ``(T,)`` or ``(B, T)`` waveforms.
        sample_rate: their rate.
        n_fft: FFT (and Hann window) size.
        hop_length: samples between frames.
        n_mels: mel bands.
        filterbank: a precomputed :func:`mel_filterbank` (saves time over many clips).

    Returns:
        ``(n_mels, frames)`` or ``(B, n_mels, frames)``; each clip has zero mean and unit
        variance, so loudness does not leak into the features.
    """
    single = x.dim() == 1
    x = x.view(1, -1) if single else x
    if x.shape[-1] < n_fft:  # torch.stft needs at least one full window after padding
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    fb = filterbank if filterbank is not None else mel_filterbank(n_mels, n_fft, sample_rate)
    spec = torch.stft(x, n_fft, hop_length, window=torch.hann_window(n_fft), return_complex=True)
    power = spec.abs() ** 2  # (B, F, frames)
    mel = torch.einsum("bft,fm->bmt", power, fb)  # (B, M, frames)
    logmel = torch.log(mel.clamp_min(1e-10))
    mean = logmel.mean((1, 2), keepdim=True)
    std = logmel.std((1, 2), keepdim=True).clamp_min(1e-5)
    out = (logmel - mean) / std
    return out[0] if single else out

