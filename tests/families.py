"""Every member of a component family, found by itself: from its configs and from its package's modules.

A family is a config group (``configs/<group>/*.yaml``) and a package whose modules each define one
member class (``mtmm_train/<package>/<name>.py``, the same ``<name>`` as the config). Tests take their
cases from here, never from a list written by hand, so a new fusion (encoder, MTL architecture,
reader, ...) is tested as soon as its module and its config exist; ``tests/test_configs.py`` checks
that each class has its config and each config its class.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from mtmm_train.balancers import FAMILIES as BALANCER_FAMILIES
from mtmm_train.data.readers import ModalityReader, TargetReader
from mtmm_train.encoders import Encoder
from mtmm_train.fusion import Fusion
from mtmm_train.mtl import MTLArchitecture

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Family:
    """One kind of component: its config group, its package and the base class of its members.

    Attributes:
        group: the config group (``configs/<group>/``).
        package: the package whose modules hold the members.
        base: the members' base class(es).
        base_modules: modules of the package that hold bases and helpers, not members.
    """

    group: str
    package: str
    base: type | tuple[type, ...]
    base_modules: tuple[str, ...] = ("base",)


FAMILIES = {
    "encoder": Family("encoder", "mtmm_train.encoders", Encoder),
    "fusion": Family("fusion", "mtmm_train.fusion", Fusion),
    "mtl": Family("mtl", "mtmm_train.mtl", MTLArchitecture),
    "balancer": Family("balancer", "mtmm_train.balancers", BALANCER_FAMILIES),
    "reader": Family("reader", "mtmm_train.data.readers", ModalityReader),
    "target": Family("target", "mtmm_train.data.readers", TargetReader),
}


def configs(group: str) -> dict[str, DictConfig]:
    """name -> the config node of every ``configs/<group>/<name>.yaml``, sorted by name."""
    return {p.stem: OmegaConf.load(p) for p in sorted((CONFIGS / group).glob("*.yaml"))}


def config_names(group: str) -> list[str]:
    """The names of the configs of ``group``, sorted."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def default_option(group: str) -> str | None:
    """The option of ``group`` that ``configs/train.yaml``'s defaults list picks (None: none by default)."""
    for entry in yaml.safe_load((CONFIGS / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    raise KeyError(f"configs/train.yaml's defaults list has no group {group}")


def classes(family: Family) -> dict[str, type]:
    """module name -> the member class each module of the family's package defines, sorted by name.

    A member is a concrete subclass of ``family.base`` (not a base itself) defined in that module (not
    imported into it).
    A module that defines no member (a base, a helper, or another family's module in a shared
    package) is left out; one that defines several is an error.
    """
    package = importlib.import_module(family.package)
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in family.base_modules:
            continue
        module = importlib.import_module(f"{family.package}.{info.name}")
        bases = family.base if isinstance(family.base, tuple) else (family.base,)
        members = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, bases)
                   and c not in bases and c.__module__ == module.__name__ and not inspect.isabstract(c)]
        assert len(members) <= 1, f"{module.__name__} defines {len(members)} members of {family.group}: {members}"
        if members:
            found[info.name] = members[0]
    return found


def target_of(cls: type) -> str:
    """The ``_target_`` that names ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"
