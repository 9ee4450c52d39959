"""What a config stored in a checkpoint may build: each place a component sits, and what may sit there.

A checkpoint loads without running code (``weights_only=True``), but ``mtmm-eval`` rebuilds the
run from the config stored inside it, and building instantiates every ``_target_``. So a stored
``_target_`` is accepted only when it sits in one of the :data:`SLOTS` below and the object it
names (imported as ``<module>.<name>``: a real module, then one attribute, never a chain such as
``mtmm_train.checkpoint.torch.save``) is one of that slot's components:

* a class defined in ``mtmm_train`` (or, for the optimizer and the schedule, in ``torch.optim``)
  that subclasses the slot's base class (an encoder must be an ``Encoder``, a reader a
  ``ModalityReader``...), or
* a function listed by name in the slot's ``factories`` (the dataset builders and the schedules:
  functions cannot be recognised by a base class, so each one is listed here).

A new component class needs no entry (it subclasses its base); a new dataset builder or schedule
function, or a new place in the config that builds a component, must be added here.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any

# Only modules under these are ever imported to resolve a stored _target_ (importing runs the
# module's top-level code): the project's own modules, and torch's optimizers and schedules.
IMPORTABLE = ("mtmm_train", "torch.optim")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class Slot:
    """A place in the config where the recipe builds a component.

    Attributes:
        path: the config keys leading to the node; ``*`` stands for any one name
            (``model.encoders.*``: the encoder of each modality).
        what: what sits there, for messages (``an encoder``).
        bases: dotted names of base classes; a subclass of one of them is allowed.
        modules: where such a subclass must be defined (its ``__module__`` starts with one).
        factories: dotted names of the functions allowed here.
        partial: the node may (must, for the recipe) set ``_partial_: true``: the recipe calls the
            result with arguments known at run time (the parameters, the optimizer).
    """

    path: tuple[str, ...]
    what: str
    bases: tuple[str, ...] = ()
    modules: tuple[str, ...] = ("mtmm_train.",)
    factories: tuple[str, ...] = ()
    partial: bool = False

    def matches(self, path: tuple[Any, ...]) -> bool:
        """True when the config keys ``path`` lead to this slot."""
        return len(path) == len(self.path) and all(
            isinstance(k, str) and (p == "*" or p == k) for p, k in zip(self.path, path, strict=True))

    @property
    def key(self) -> str:
        """The slot as a config key, e.g. ``model.encoders.*``."""
        return ".".join(self.path)


DATASETS = ("mtmm_train.data.synthetic.synthetic", "mtmm_train.data.files.files",
            "mtmm_train.data.penguins.penguins", "mtmm_train.data.diamonds.diamonds",
            "mtmm_train.data.av_digits.av_digits", "mtmm_train.data.random.random_reference")
SCHEDULES = ("mtmm_train.optim.constant", "mtmm_train.optim.cosine", "mtmm_train.optim.one_cycle")

SLOTS: tuple[Slot, ...] = (
    Slot(("dataset",), "a dataset builder", factories=DATASETS),
    Slot(("dataset", "modalities", "*"), "a modality reader", bases=("mtmm_train.data.readers.base.ModalityReader",)),
    Slot(("dataset", "tasks", "*"), "a target reader", bases=("mtmm_train.data.readers.base.TargetReader",)),
    Slot(("model", "encoders", "*"), "an encoder", bases=("mtmm_train.encoders.base.Encoder",)),
    # encoder=frames builds an image encoder per frame of a video from its nested `frame` node
    Slot(("model", "encoders", "*", "frame"), "an encoder", bases=("mtmm_train.encoders.base.Encoder",)),
    Slot(("model", "heads", "*"), "a head", bases=("torch.nn.Module",)),
    Slot(("fusion",), "a fusion", bases=("mtmm_train.fusion.base.Fusion",)),
    Slot(("mtl",), "an MTL architecture", bases=("mtmm_train.mtl.base.MTLArchitecture",)),
    Slot(("balancer",), "a balancer", bases=("mtmm_train.balancers.base.Balancer",)),
    Slot(("optimizer",), "an optimizer", bases=("torch.optim.Optimizer",), modules=("mtmm_train.", "torch.optim."),
         partial=True),
    Slot(("scheduler",), "a learning-rate schedule", bases=("torch.optim.lr_scheduler.LRScheduler",),
         modules=("mtmm_train.", "torch.optim."), factories=SCHEDULES, partial=True),
    Slot(("loader",), "a training loader", bases=("mtmm_train.data.dataloader.StreamingLoader",)),
)


def slot_of(path: tuple[Any, ...]) -> Slot | None:
    """The slot the config keys ``path`` lead to, or None where no component is built."""
    return next((s for s in SLOTS if s.matches(path)), None)


def locate(name: str) -> Any:
    """The object ``name`` (``<module>.<attribute>``) names, importing only modules under :data:`IMPORTABLE`.

    The part before the last dot must itself be a module (imported by that name, and registered
    under it), so attribute chains through a module's imports are refused.

    Raises:
        LookupError: with the reason, when ``name`` is malformed, outside :data:`IMPORTABLE`, not
            importable, or names no attribute of its module.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise LookupError("not a dotted name of the form module.attribute")
    module_name, _, attr = name.rpartition(".")
    if not any(module_name == p or module_name.startswith(p + ".") for p in IMPORTABLE):
        raise LookupError(f"outside {' and '.join(p + '.' for p in IMPORTABLE)}")
    if any(part.startswith("__") for part in name.split(".")):
        raise LookupError("a special (dunder) name")
    try:
        module = importlib.import_module(module_name)
    except Exception:  # not a module (e.g. mtmm_train.checkpoint.torch), or it failed to import
        raise LookupError(f"'{module_name}' is not a module") from None
    if not inspect.ismodule(module) or module.__name__ != module_name:
        raise LookupError(f"'{module_name}' is not a module")
    try:
        return inspect.getattr_static(module, attr)  # no module __getattr__ hooks, no properties
    except AttributeError:
        raise LookupError(f"module '{module_name}' has no '{attr}'") from None


def check_component(slot: Slot, target: str) -> str | None:
    """Why ``target`` may not sit in ``slot``, or None when it is one of the slot's components.

    The check is on the object ``target`` resolves to (see :func:`locate`), never on its name.
    """
    try:
        obj = locate(target)
    except LookupError as e:
        return str(e)
    if inspect.isclass(obj):
        bases = tuple(_named(b) for b in slot.bases)
        if not bases:
            return f"a class, where {slot.what} is one of the functions {_short(slot.factories)}"
        if not issubclass(obj, bases):
            return f"not a subclass of {' or '.join(b.__name__ for b in bases)}"
        if not str(obj.__module__).startswith(slot.modules):
            return f"defined in '{obj.__module__}', outside {' and '.join(slot.modules)}"
        return None
    if inspect.isfunction(obj):
        if any(obj is _named(f) for f in slot.factories):
            return None
        return (f"a function other than {_short(slot.factories)}" if slot.factories
                else "a function, where a class is expected")
    return f"a {type(obj).__name__}, neither a component class nor an allowed function"


def _short(names: tuple[str, ...]) -> str:
    return ", ".join(n.rsplit(".", 1)[-1] for n in names)


def _named(name: str) -> Any:
    """The object a dotted name of this module's own tables names (trusted names only)."""
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)
