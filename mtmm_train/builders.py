"""Build components from config nodes with ``_target_``, turning failures into one-line errors."""

from __future__ import annotations

import functools
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mtmm_train.errors import UserError


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
            unknown or of the wrong type, or the constructor refused a value.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        found = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        raise UserError(f"{key} must be a config with a _target_, found {found!r}")
    clash = [k for k in runtime if k in node]
    if clash:
        raise UserError(f"{key}.{clash[0]} is set by the recipe at run time; remove it from the config")
    # Runtime objects are bound after instantiation: passed through instantiate, a dataclass
    # such as ModalitySpec would be converted into a dict.
    try:
        factory = instantiate(node, _convert_="all", _partial_=True)
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise UserError(f"{key} (_target_ {node._target_}) could not be built: {_one_line(cause)}") from None
    if node.get("_partial_", False):
        return functools.partial(_call, factory, key, node._target_, **runtime)
    return _call(factory, key, node._target_, **runtime)


def _call(factory: Any, key: str, target: str, *args: Any, **kwargs: Any) -> Any:
    # A partial (optimizer, scheduler) is called later by the recipe: its bad settings
    # (optimizer.lr=-1, betas=[0.9]) must fail there as one line too.
    try:
        return factory(*args, **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
        raise UserError(f"{key} (_target_ {target}) could not be built: {_one_line(e)}; check the settings "
                        f"under {key}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
