"""Build one component from its config node (``_target_``): arguments checked against the constructor first,
failures turned into one-line errors that name the config key.

Components do not know where they sit in the config: they raise
:class:`~mtmm_train.errors.ComponentError` (:class:`~mtmm_train.errors.SettingError` for one setting,
``out_dim must be a size >= 1, found -8``), and :func:`build` (for the constructor) or :func:`located`
(for a method called later, such as a reader's ``read``) puts the key in front:
``model.encoders.tabular.out_dim must be a size >= 1, found -8``.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import inspect
import math
import types
import typing
from collections.abc import Iterator
from typing import Any

from hydra._internal.utils import _locate
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtmm_train.errors import ComponentError, UserError, note_built

# Keys of a node that Hydra reads itself, not the constructor.
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
_LISTS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
          collections.abc.Set)
_ITERABLES = (collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_NAMES = {bool: ("a boolean (true or false)", "booleans"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), type(None): ("null", "nulls")}


def build(node: DictConfig, key: str, **runtime: Any) -> Any:
    """``instantiate(node)`` called with ``runtime``, the sizes and objects known only at run time.

    A node with ``_partial_: true`` (optimizer, scheduler) returns the partial, with
    ``runtime`` bound; calling it raises :class:`UserError` as well.

    Args:
        node: the config node (holds ``_target_`` and the constructor's arguments).
        key: where the node sits in the config, for error messages (e.g. ``fusion``).
        runtime: constructor arguments the recipe supplies (``in_dims``, ``tasks``, ...).

    Raises:
        UserError: the node has no ``_target_``, the target is not importable, an argument is
            unknown or of the wrong type, or the constructor refused a value (its
            :class:`~mtmm_train.errors.ComponentError`, with ``key`` put in).
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        found = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        raise UserError(f"{key} must be a config with a _target_, found {found!r}")
    clash = [k for k in runtime if k in node]
    if clash:
        raise UserError(f"{key}.{clash[0]} is set by the recipe at run time; remove it from the config")
    check_arguments(node, key)
    # Runtime objects are bound after instantiation: passed through instantiate, a dataclass
    # such as ModalitySpec would be converted into a dict.
    try:
        factory = instantiate(node, _convert_="all", _partial_=True)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise UserError(f"{key} (_target_ {node._target_}) could not be built: {_one_line(cause)}") from None
    if node.get("_partial_", False):
        return functools.partial(_call, factory, key, node._target_, **runtime)
    built = _call(factory, key, node._target_, **runtime)
    note_built(built, key)  # for a refusal after construction (ComponentError's source)
    return built


def resolve_target(node: DictConfig, key: str) -> Any:
    """The class or function a node's ``_target_`` names, without building it (e.g. to ask an encoder class
    for its preprocessing before the data exists).

    Raises:
        UserError: the node has no ``_target_``, or it names nothing importable.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        found = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        raise UserError(f"{key} must be a config with a _target_, found {found!r}")
    try:
        return _locate(node._target_)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"{key}._target_ '{node._target_}' cannot be imported ({_one_line(e)}); check the name, "
                        "or choose a config of its group") from None


def _call(factory: Any, key: str, target: str, *args: Any, **kwargs: Any) -> Any:
    # A partial (optimizer, scheduler) is called later by the recipe: its bad settings
    # (optimizer.lr=-1, betas=[0.9]) must fail there as one line too.
    try:
        return factory(*args, **kwargs)
    except ComponentError as e:  # the component's own words: only the key is missing
        raise UserError(e.at(key)) from None
    except UserError:  # already names its key (a dataset building its readers)
        raise
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
        raise UserError(f"{key} (_target_ {target}) could not be built: {_one_line(e)}; check the settings "
                        f"under {key}") from None


@contextlib.contextmanager
def located(key: str) -> Iterator[None]:
    """Call a component built at ``key`` after :func:`build` (a reader's ``read``): a
    :class:`~mtmm_train.errors.ComponentError` it raises becomes a :class:`UserError` that names ``key``.

    Raises:
        UserError: ``<key>.<setting> ...`` or ``<key>: ...``.
    """
    try:
        yield
    except ComponentError as e:
        raise UserError(e.at(key)) from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


# ---------------------------------------------------------------------- settings against annotations
def check_arguments(node: DictConfig, key: str) -> None:
    """Check each setting of a component against the annotation of the parameter it is passed to.

    The kind of value only (a list, a number, a string, true/false, null; and the kinds inside a
    list or mapping): lengths and ranges are the constructor's to check, in its own words.
    ``mtl.hidden_dims=64`` for ``hidden_dims: tuple[int, ...]`` fails here, naming the setting,
    instead of as ``'int' object is not iterable`` inside the constructor; so does a NaN or
    infinite number (``optimizer.lr=inf``) unless it is the parameter's default. Settings whose
    annotation says nothing checkable (a class, ``Any``, none) pass, and so does anything when
    the target cannot be imported or inspected: :func:`build` then reports what Hydra says.

    Raises:
        UserError: ``<key>.<name> must be <type>, found <value>; e.g. <key>.<name>=<example>``.
    """
    params = _parameters(str(node.get("_target_", "")))
    if not params:
        return
    try:
        values = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException:
        return  # an interpolation that does not resolve: instantiate says which
    for name, value in values.items():
        param = params.get(str(name))
        if param is None or name in HYDRA_KEYS or (isinstance(value, dict) and "_target_" in value):
            continue  # unknown keys are the constructor's to refuse; nested components are checked on their own
        ann, default = param.annotation, param.default
        if _conforms(value, ann) is False:
            what = describe_type(ann)
            if what:
                raise UserError(f"{key}.{name} must be {what}, found {_found(value)}; e.g. "
                                f"{key}.{name}={_example(value, ann, default)}")
        bad = _nonfinite(value)
        if bad is not None and not _same(value, default):
            fix = f"e.g. {key}.{name}={override_text(default)}" if _finite_example(default) else "give a finite value"
            raise UserError(f"{key}.{name} must be finite, found {_found(value)}; {fix}")


@functools.lru_cache(maxsize=256)
def _parameters(target: str) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of ``target`` (a class: its constructor's), or None if it cannot be told."""
    try:
        obj = _locate(target)  # hydra.utils.get_object would also log an error
    except Exception:  # not importable: instantiate reports it
        return None
    for eval_str in (True, False):  # string annotations that do not evaluate are left unchecked
        try:
            sig = inspect.signature(obj, eval_str=eval_str)
        except (NameError, TypeError, ValueError, SyntaxError, AttributeError):
            continue
        return {n: p for n, p in sig.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return None


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _kind(ann: Any) -> tuple[str, tuple]:
    """``("list" | "iterable" | "mapping" | "literal" | "scalar" | "other", type args)``."""
    origin = typing.get_origin(ann) or ann
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return "literal", args
    if origin in _LISTS:
        return "list", args
    if origin in _ITERABLES:
        return "iterable", args
    if origin in _MAPPINGS:
        return "mapping", args
    if ann in _NAMES:
        return "scalar", ()
    return "other", args


def _element_types(ann: Any, value: list) -> list[Any] | None:
    """The annotation of each element of ``value`` (None: the length is wrong for a fixed tuple)."""
    args = typing.get_args(ann)
    if not args:
        return [Any] * len(value)
    if (typing.get_origin(ann) or ann) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return list(args) if len(args) == len(value) else None
    return [args[0]] * len(value)


def _conforms(value: Any, ann: Any) -> bool | None:
    """Whether a config value (None, bool, int, float, str, list or dict) fits ``ann``; None: cannot tell."""
    if ann is inspect.Parameter.empty or ann is Any or isinstance(ann, str | typing.TypeVar):
        return None
    if _is_union(ann):
        results = [_conforms(value, a) for a in typing.get_args(ann)]
        return True if True in results else None if None in results else False
    if ann is None or ann is type(None):
        return value is None
    kind, args = _kind(ann)
    if kind == "literal":
        return value in args
    if kind == "scalar":
        if ann is bool:
            return isinstance(value, bool)
        if ann is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if ann is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        return not isinstance(value, list | dict | type(None))  # str: numbers become strings (a column "2020")
    if kind in ("list", "iterable"):
        if not isinstance(value, list):
            return False if kind == "list" or isinstance(value, dict) else None
        types_ = _element_types(ann, value)
        if types_ is None:  # a fixed-size tuple of another length: the constructor says it best
            return None     # (an image size "must be [height, width] in pixels")
        results = [_conforms(v, a) for v, a in zip(value, types_, strict=True)]
        return False if False in results else None if None in results else True
    if kind == "mapping":
        if not isinstance(value, dict):
            return False
        if len(args) != 2:
            return True
        results = [_conforms(v, args[1]) for v in value.values()]
        return False if False in results else None if None in results else True
    return None  # a class (Path, Tensor, a dataclass): the constructor converts or refuses


def describe_type(ann: Any, plural: bool = False) -> str | None:
    """``ann`` in words (``a list of integers``, ``an integer or null``); None when it says nothing checkable."""
    if _is_union(ann):
        parts = [describe_type(a, plural) for a in typing.get_args(ann)]
        known = list(dict.fromkeys(p for p in parts if p))
        return " or ".join(known) if known else None
    if ann is None or ann is type(None):
        return "nulls" if plural else "null"
    kind, args = _kind(ann)
    if kind == "scalar":
        return _NAMES[ann][1 if plural else 0]
    if kind == "literal":
        return f"one of {', '.join(override_text(a) for a in args)}"
    if kind == "mapping":
        inner = describe_type(args[1], plural=True) if len(args) == 2 else None
        return "mappings" if plural else f"a mapping of {inner}" if inner else "a mapping"
    if kind in ("list", "iterable"):
        if plural:
            return "lists"
        fixed = (typing.get_origin(ann) or ann) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
        inner = [describe_type(a, plural=True) for a in args[:1 if not fixed else len(args)]]
        if not args or not all(inner):
            return "a list"
        if fixed:
            return f"a list of {len(args)} {inner[0]}" if len(set(inner)) == 1 else \
                f"a list of {len(args)} values ({', '.join(inner)})"
        return f"a list of {inner[0]}"
    return None


def _example(value: Any, ann: Any, default: Any) -> str:
    """A value that fits ``ann``: the value found in a list (``[64]``) or out of one, else the default."""
    candidates = [[value]] if not isinstance(value, list | dict) else []
    if isinstance(value, list) and len(value) == 1:
        candidates.append(value[0])
    if default is not inspect.Parameter.empty:
        candidates.append(_plain(default))
    if not isinstance(value, list | dict):
        candidates += [[value] * n for n in _fixed_lengths(ann)]
    return next((override_text(c) for c in candidates if _conforms(c, ann) is True), "...")


def _fixed_lengths(ann: Any) -> list[int]:
    """The lengths of the fixed-size tuples ``ann`` allows (``tuple[int, int]``: 2)."""
    out = []
    for a in typing.get_args(ann) if _is_union(ann) else (ann,):
        args = typing.get_args(a)
        if (typing.get_origin(a) or a) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            out.append(len(args))
    return out


def _plain(value: Any) -> Any:
    """A Python default as a config value would be (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _nonfinite(value: Any) -> float | None:
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, list):
        return next((v for v in map(_nonfinite, value) if v is not None), None)
    return None


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(_plain(default) == value) or (isinstance(value, float) and isinstance(default, float)
                                                   and math.isnan(value) and math.isnan(default))
    except Exception:
        return False


def _finite_example(default: Any) -> bool:
    return default is not inspect.Parameter.empty and default is not None and _nonfinite(_plain(default)) is None \
        and isinstance(_plain(default), int | float | list) and not isinstance(default, bool)


def override_text(value: Any) -> str:
    """A value as written on the command line: ``[64,32]``, ``null``, ``true``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _found(value: Any) -> str:
    """A value as found, strings quoted: ``64``, ``'x'``, ``['a']``."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_found(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_found(v)}" for k, v in value.items()) + "}"
    return override_text(value)
