"""Finding pretrained weights for the backbone encoders (timm, hf): local files, the hub cache, offline rules.

A helper of :mod:`mtmm_train.encoders.timm` and :mod:`mtmm_train.encoders.hf` (no encoder here).
The rule everywhere: look locally first (a path the user gave, then the Hugging Face or torch hub
cache); reach the network only when that fails and the machine is not offline (``HF_HUB_OFFLINE``
or ``TRANSFORMERS_OFFLINE`` set); and turn every failure into one line that names the model and
says how to give a local path. No network timeout is ever waited for offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from mtmm_train.data.optional import require
from mtmm_train.errors import KEY, SettingError

#: Weight files a model folder may hold, in the order they are preferred.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                "model.pth", "model.pt")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when the Hugging Face hub must not be reached (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def backbones(module: str, purpose: str) -> Any:
    """Import an optional backbone package (timm, transformers...), or fail with one line naming the extra."""
    return require(module, "backbones", purpose)


def weight_file(path: str | Path, setting: str = "pretrained") -> Path:
    """The weights file ``path`` names: the file itself, or the weights inside a model folder.

    Raises:
        SettingError: about ``setting``: the path does not exist, or is a folder without weights.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix not in WEIGHT_SUFFIXES:
            raise SettingError(setting, f"is '{path}', which is not a weights file; give a .safetensors, .pth or .bin "
                               "file or a model folder")
        return p
    if p.is_dir():
        for name in WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        found = sorted(f.name for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        if len(found) == 1:
            return p / found[0]
        raise SettingError(setting, f"is the folder '{path}', which holds {'several' if found else 'no'} weights "
                           f"files{' ' + str(found) if found else ''}; give the file itself, e.g. "
                           f"{KEY}.{setting}={p / (found[0] if found else 'model.safetensors')}")
    raise SettingError(setting, f"is '{path}', which does not exist; give a .safetensors, .pth or .bin file, a model "
                       "folder, true (the hub cache) or false (random weights)")


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.bin`` checkpoint (loaded with
    ``weights_only=True``: no code runs); a ``state_dict``/``model`` entry is unwrapped."""
    import torch

    if path.suffix == ".safetensors":
        st = backbones("safetensors.torch", "loading a .safetensors file")
        return st.load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not a plain checkpoint
        raise SettingError("pretrained", f"is '{path}', which could not be read as weights ("
                           f"{str(e).splitlines()[0][:120]}); give a .safetensors, .pth or .bin state dict") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def cached_hub_file(repo_id: str, filenames: tuple[str, ...] = WEIGHT_FILES) -> str | None:
    """A file of the Hugging Face hub repository ``repo_id`` already in the local cache (no network), or None."""
    hub = backbones("huggingface_hub", "finding cached weights")
    for name in filenames:
        found = hub.try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return found
    return None


def not_available(name: str, setting: str, how: str, error: BaseException | None = None) -> SettingError:
    """The one line for weights that are neither local nor cached (or could not be downloaded)."""
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline() or error is None else \
        f"it is not cached and could not be downloaded ({' '.join(str(error).split())[:120]})"
    return SettingError(setting, f"asks for the pretrained weights of '{name}', but {why}; {how}")
