"""Audio-visual digits: real handwritten digits paired with spoken digits, built offline.

Images are scikit-learn's 1,797 handwritten digits (8x8, bundled with the package). Each is
paired with the same digit spoken by ``espeak-ng`` (a Debian package) in one of several
voices, speeds and pitches, as a log-mel spectrogram. White noise on the audio
(``audio_noise``) and on the images (``image_noise``) makes each modality alone unreliable,
so fusing both matters. Tasks: ``digit`` (both modalities), ``gender`` of the voice and
``speed`` of speech (regression; audio only).

The spoken clips are synthesised once, deterministically, into the cache folder (a few seconds;
``scripts/build_av_digits.py`` does it ahead of time); pairing, noise and features are then
drawn from ``seed``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from mtmm_train import fileio
from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.audio import log_mel, mel_filterbank, read_wav, resample
from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.data.cache import cache_key, load_cached, save_cached
from mtmm_train.data.optional import require
from mtmm_train.data.splits import SPLITS, assign_splits
from mtmm_train.errors import UserError, check

__all__ = ["av_digits", "build_clips"]

log = logging.getLogger("mtmm_train")

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GENDERS = ("female", "male")  # the gender task's 0 and 1


def espeak_version() -> str:
    """The installed espeak-ng's version line (part of the cache key: another version speaks differently)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("dataset=av_digits synthesises speech with espeak-ng, which is not installed; install it "
                        "with: apt-get install espeak-ng (Debian/Ubuntu), or use another dataset")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesize(word: str, voice: str, speed: int, pitch: int, sample_rate: int, folder: Path) -> Tensor:
    """Speak ``word`` with espeak-ng; return the waveform ``(T,)`` at ``sample_rate``."""
    out = folder / f"{voice}-{speed}-{pitch}-{word}.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), word]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        raise UserError(f"espeak-ng failed for voice '{voice}' ({' '.join(done.stderr.split())[:120]}); check "
                        "dataset.male_voices and dataset.female_voices against `espeak-ng --voices`")
    wave, rate = read_wav(out)
    return resample(wave, rate, sample_rate)


def build_clips(cache_dir: str, male_voices: list[str], female_voices: list[str], speeds: list[int],
                pitches: list[int], sample_rate: int = 16000) -> Path:
    """Synthesise every (voice, speed, pitch, digit) clip once into the cache; return its path.

    Args:
        cache_dir: the cache folder.
        male_voices, female_voices: espeak-ng voices (``en-us+m3``), by gender.
        speeds: words per minute.
        pitches: espeak-ng pitches (0-99).
        sample_rate: rate the clips are stored at.

    Returns:
        The cache file (``waves``: int16 clips, ``digit``, ``gender``, ``speed`` per clip).
    """
    voices = {**{v: "female" for v in female_voices}, **{v: "male" for v in male_voices}}
    check(len(male_voices) > 0 and len(female_voices) > 0,
          f"dataset.male_voices and dataset.female_voices must each name a voice (the gender task needs both), "
          f"found {list(male_voices)} and {list(female_voices)}")
    check(len(speeds) > 0 and len(pitches) > 0, "dataset.speeds and dataset.pitches must each name at least one value")
    version = espeak_version()
    settings = {"voices": voices, "speeds": list(speeds), "pitches": list(pitches), "rate": sample_rate,
                "words": WORDS, "espeak": version}
    path = Path(cache_dir).expanduser() / "av_digits" / f"clips-{cache_key('', settings)}.pt"
    if path.is_file():
        return path
    combos = [(w, v, s, p) for v in voices for s in speeds for p in pitches for w in WORDS]
    log.info("av_digits: synthesising %d spoken digits with %s into %s", len(combos), version.split(":")[0], path)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(4) as pool:
        waves = list(pool.map(lambda c: synthesize(*c, sample_rate, Path(tmp)), combos))
    payload = {
        "waves": [(w.clamp(-1, 1) * 32767).round().to(torch.int16) for w in waves],
        "digit": torch.tensor([WORDS.index(c[0]) for c in combos]),
        "gender": torch.tensor([GENDERS.index(voices[c[1]]) for c in combos]),
        "speed": torch.tensor([float(c[2]) for c in combos]),
    }
    fileio.save_torch(payload, path)  # atomic; a unique temporary file, so two runs may build it at once
    return path


def av_digits(male_voices: list[str], female_voices: list[str], speeds: list[int], pitches: list[int],
              audio_noise: float = 1.0,
              image_noise: float = 0.0, sample_rate: int = 16000, n_mels: int = 32, n_fft: int = 400,
              hop_length: int = 160, max_frames: int = 80, split_ratios: list[float] = (0.6, 0.2, 0.2),
              seed: int = 0, cache_dir: str = "~/.cache/mtmm-train") -> MultiModalData:
    """Pair each handwritten digit with a spoken one; add noise; compute log-mel features.

    Args:
        male_voices, female_voices: espeak-ng voices by gender (the ``gender`` task).
        speeds: speaking rates in words per minute (the ``speed`` task).
        pitches: espeak-ng pitches (a nuisance factor).
        audio_noise: standard deviation of white noise, relative to each clip's RMS.
        image_noise: standard deviation of Gaussian noise on the images (scaled to [0, 1]).
        sample_rate, n_mels, n_fft, hop_length, max_frames: log-mel settings, as in the audio reader.
        split_ratios: train, val, test fractions (drawn with ``seed``).
        seed: seed of the pairing, the noise and the split.
        cache_dir: where the synthesised clips and the finished dataset are kept.

    Returns:
        Modalities ``image`` (1, 8, 8) and ``audio`` (n_mels, max_frames); tasks ``digit``
        (10 classes), ``gender`` (binary) and ``speed`` (regression, standardised).
    """
    check(audio_noise >= 0 and image_noise >= 0,
          f"dataset.audio_noise and dataset.image_noise must be >= 0, found {audio_noise}, {image_noise}")
    settings = {"voices": [list(male_voices), list(female_voices)], "speeds": list(speeds),
                "pitches": list(pitches), "audio_noise": audio_noise,
                "image_noise": image_noise, "rate": sample_rate, "n_mels": n_mels, "n_fft": n_fft,
                "hop": hop_length, "frames": max_frames, "split": list(split_ratios), "seed": seed}
    clips_path = build_clips(cache_dir, male_voices, female_voices, speeds, pitches, sample_rate)
    entry = clips_path.parent / f"data-{cache_key(clips_path.name, settings)}.pt"
    data = load_cached(entry)
    if data is not None:
        return data
    sklearn_datasets = require("sklearn.datasets", "av", "dataset=av_digits", package="scikit-learn")
    digits = sklearn_datasets.load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    clips = torch.load(clips_path, weights_only=True)
    g = torch.Generator().manual_seed(seed)

    # Pair image i with a random clip of the same digit.
    n = len(labels)
    pick = torch.empty(n, dtype=torch.long)
    for d in range(len(WORDS)):
        rows, options = (labels == d).nonzero().squeeze(1), (clips["digit"] == d).nonzero().squeeze(1)
        pick[rows] = options[torch.randint(len(options), (len(rows),), generator=g)]
    length = (max_frames - 1) * hop_length  # samples that fill max_frames frames
    waves = torch.zeros(n, length)
    for i, c in enumerate(pick.tolist()):
        w = clips["waves"][c].float()[:length] / 32767
        waves[i, :len(w)] = w
    rms = waves.pow(2).mean(1, keepdim=True).sqrt()  # (N, 1)
    waves = waves + audio_noise * rms * torch.randn(waves.shape, generator=g)
    audio = log_mel(waves, sample_rate, n_fft, hop_length, n_mels, mel_filterbank(n_mels, n_fft, sample_rate))
    audio = audio[:, :, :max_frames]  # (N, M, max_frames)
    images = images + image_noise * torch.randn(images.shape, generator=g)

    split = assign_splits({}, n, None, list(split_ratios), seed)
    speed = clips["speed"][pick]
    train_speed = speed[split == 0]
    speed = (speed - train_speed.mean()) / train_speed.std(correction=0).clamp_min(1e-6)
    targets = {"digit": labels, "gender": clips["gender"][pick].float(), "speed": speed}
    ones = torch.ones(n, dtype=torch.bool)
    splits = {}
    for i, name in enumerate(SPLITS):
        rows = (split == i).nonzero().squeeze(1)
        if len(rows):
            splits[name] = TensorSplit({"image": images[rows], "audio": audio[rows]},
                                       {"image": ones[rows], "audio": ones[rows]},
                                       {t: y[rows] for t, y in targets.items()}, {t: ones[rows] for t in targets})
    data = MultiModalData(
        {"image": ModalitySpec("image", (1, 8, 8), "image"),
         "audio": ModalitySpec("audio", (n_mels, max_frames), "sequence")},
        {"digit": TaskSpec("digit", "multiclass", 10), "gender": TaskSpec("gender", "binary", 1),
         "speed": TaskSpec("speed", "regression", 1)},
        splits)
    save_cached(entry, data)
    return data
