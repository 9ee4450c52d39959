"""The exception types for user mistakes (config, data, checkpoints).

The CLI prints a :class:`UserError` as a single line and exits with status 2, without a traceback.

Components (encoders, fusions, MTL architectures, heads, balancers, data readers) do not know
where they sit in the config: they raise a :class:`ComponentError` (a :class:`SettingError` when
the message is about one of their settings), and the builder that built them
(:func:`mtmm_train.instantiate.build`, :func:`mtmm_train.instantiate.located`) names the config key.
"""

from __future__ import annotations

import weakref

# Stands for the component's config key in a ComponentError's message (f"e.g. {KEY}.dim=16",
# f"encoder@{KEY}=mlp"); the builder replaces it with the key (``fusion``, ``model.encoders.image``).
KEY = "{key}"


class UserError(Exception):
    """A mistake in the user's config, data or files: the message says key, value found and fix."""


class ComponentError(UserError, ValueError):
    """A component refuses its settings or its input, in words that do not say where it sits in the config.

    :meth:`at` renders the message for the config key the component was built at: a message that
    starts with :data:`KEY` is about one setting and reads as it is (``fusion.dim must be ...``);
    any other is about the component as a whole and gets the key in front
    (``model.encoders.tabular: CNNEncoder reads image input, ...``). :data:`KEY` elsewhere in the
    message is replaced by the key too, so a fix can be copied to the command line
    (``e.g. fusion.num_heads=2``).

    It is a ValueError, for Python code that builds a component itself (``str(e)`` names the
    settings without a key: ``dim must be ...``), and a UserError, so that a refusal after
    construction (a check in ``forward``) still ends the CLI with one line; such a refusal passes
    ``source=self``, and ``str(e)`` then names the key the builder noted (:func:`built_at`).

    Args:
        message: what is wrong, what was found and how to fix it.
        source: the component that refuses, when it was built before (a check outside ``__init__``).
    """

    def __init__(self, message: str, source: object = None) -> None:
        self.template = message
        super().__init__(self.at(built_at(source)))

    def at(self, key: str | None) -> str:
        """The message for a component built at ``key`` (None: without a key, as ``str(e)``)."""
        if key is None:
            return self.template.replace(KEY + ".", "").replace(KEY, "<key>")
        text = self.template.replace(KEY, key)
        return text if self.template.startswith(KEY) else f"{key}: {text}"


class SettingError(ComponentError):
    """A component refuses one of its settings: ``SettingError("out_dim", "must be a size >= 1, found -8")``.

    ``str(e)`` starts with the setting's name (``out_dim must be ...``); built at
    ``model.encoders.tabular``, the CLI shows ``model.encoders.tabular.out_dim must be ...``.

    Args:
        setting: the constructor parameter (``weights.cls`` for an entry of a mapping).
        message: the rest of the sentence, from the verb on (:data:`KEY` may name the component's
            other settings: ``f"or set {KEY}.dim to a multiple of 4"``).
    """

    def __init__(self, setting: str, message: str, source: object = None) -> None:
        self.setting = setting
        super().__init__(f"{KEY}.{setting} {message}", source)


_BUILT_AT: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def note_built(component: object, key: str) -> None:
    """Note the config key ``component`` was built at (the builder's; see :class:`ComponentError`'s ``source``)."""
    try:
        _BUILT_AT[component] = key
    except TypeError:  # not weakly referenceable (a partial, a plain value): nothing refuses after construction
        pass


def built_at(component: object) -> str | None:
    """The config key ``component`` was built at, if a builder noted one."""
    try:
        return _BUILT_AT.get(component) if component is not None else None
    except TypeError:
        return None


def check(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` when ``condition`` is false."""
    if not condition:
        raise UserError(message)
