"""Fine-tuning controls per encoder: freeze, unfreeze at an epoch, learning-rate scale, layer-wise decay,
gradient checkpointing, LoRA (``peft``) and initialisation from an earlier run.

The settings sit in the encoder's own config node, beside its constructor's settings; the
constructor never sees them (the defaults are :class:`FineTuning`'s)::

    mtmm-train +model.encoders.image.freeze=true
    mtmm-train +model.encoders.text.adapter=lora +model.encoders.text.lora.r=8
    mtmm-train +model.encoders.image.lr_scale=0.1 +model.encoders.image.layer_decay=0.75

:func:`split` takes them out of the node (:mod:`mtmm_train.config` checks them before any data
is read, :func:`mtmm_train.builders.build_model` again when it builds the encoder), :func:`apply`
acts on the built encoder, in this order: ``init_from``, the LoRA wrapping, freezing, gradient
checkpointing. Everything happens when the model is built, so training, resume and ``mtmm-eval``
(which rebuilds through the builders) have the same modules and state-dict keys.

What the settings act on is the encoder's ``backbone`` (:class:`~mtmm_train.encoders.base.Encoder`),
or the whole encoder when it has none (a from-scratch encoder). Under ``adapter: lora`` the
backbone's own weights never train; ``freeze`` and ``unfreeze_at_epoch`` then act on the adapter.

The recipe calls :func:`param_groups` for the optimizer (learning-rate scales, weight decay),
:func:`describe_groups` to log them, and :func:`on_epoch_start` at the start of every epoch.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from mtmm_train import optim
from mtmm_train.errors import ComponentError, UserError

log = logging.getLogger("mtmm_train")

ADAPTERS = (None, "lora")
# The encoder attribute that holds its FineTuning once applied.
ATTRIBUTE = "fine_tuning"


@dataclass(frozen=True)
class LoraSettings:
    """``lora.*``: the LoRA adapter (``peft.LoraConfig``).

    Attributes:
        r: rank of the update.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: the layers to adapt: a list of module names (a name matches a module whose
            name ends with it), a regular expression over the full names, or ``all-linear``.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class FineTuning:
    """The fine-tuning settings of one encoder (``model.encoders.<modality>.<setting>``); the defaults
    change nothing.

    Attributes:
        freeze: no gradients for the backbone (the LoRA adapter under ``adapter: lora``), which
            also stays in eval mode (BatchNorm statistics fixed, dropout off) while the model trains.
        unfreeze_at_epoch: frozen for the first N epochs, trainable from epoch N (0-based:
            ``2`` trains it from the third epoch); null: as ``freeze`` says.
        lr_scale: a factor on the optimizer's learning rate for all of this encoder's parameters.
        layer_decay: layer-wise learning-rate decay: the parameters of block i of the n the encoder
            counts (``Encoder.block_index``, ``Encoder.num_blocks``) get ``lr * layer_decay**(n - i)``;
            null: none.
        gradient_checkpointing: recompute activations in the backward pass
            (``Encoder.set_gradient_checkpointing``).
        adapter: null, or ``lora``: train a low-rank adapter (``peft``) instead of the backbone.
        lora: the adapter's settings (:class:`LoraSettings`).
        init_from: a checkpoint of an earlier mtmm-train run to initialise this encoder from.
        init_prefix: the prefix of this encoder's weights in that checkpoint's model; null:
            ``encoders.<this modality>.``.
    """

    freeze: bool = False
    unfreeze_at_epoch: int | None = None
    lr_scale: float = 1.0
    layer_decay: float | None = None
    gradient_checkpointing: bool = False
    adapter: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    init_from: str | None = None
    init_prefix: str | None = None

    def frozen_at(self, epoch: int) -> bool:
        """Whether the trainable part is frozen during ``epoch`` (0-based)."""
        if self.unfreeze_at_epoch is not None:
            return epoch < self.unfreeze_at_epoch
        return self.freeze


KEYS = tuple(f.name for f in fields(FineTuning))
LORA_KEYS = tuple(f.name for f in fields(LoraSettings))
# peft's names and other likely spellings of the LoRA settings.
LORA_ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                "targets": "target_modules", "modules": "target_modules", "target": "target_modules"}


# ---------------------------------------------------------------------- the settings
def split(node: DictConfig, key: str) -> tuple[DictConfig, FineTuning]:
    """The encoder's constructor settings (a copy of ``node`` without the fine-tuning keys) and its
    :class:`FineTuning`.

    Args:
        node: the encoder's config node (``model.encoders.<modality>``); not changed.
        key: where it sits, for messages.

    Raises:
        UserError: a bad fine-tuning value, or a key that is neither a setting of the encoder nor a
            fine-tuning setting (``freez``: did you mean ``freeze``?).
    """
    try:
        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    except OmegaConfBaseException:  # an interpolation that does not resolve: building the encoder says which
        return node, FineTuning()
    ours = {k: values[k] for k in KEYS if k in values}
    _check_unknown(values, key)
    settings = OmegaConf.create({k: v for k, v in values.items() if k not in KEYS})
    return settings, parse(ours, key)


def _check_unknown(values: dict[str, Any], key: str) -> None:
    from mtmm_train.instantiate import HYDRA_KEYS, _parameters  # local: instantiate imports the registry

    params = _parameters(str(values.get("_target_", "")))
    if params is None or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return  # not inspectable, or takes any keyword: the constructor decides
    own = [n for n in params if n not in ("modality", "self")]
    for name in values:
        if name in HYDRA_KEYS or name in KEYS or name in params:
            continue
        close = difflib.get_close_matches(str(name), [*KEYS, *own], n=1)
        hint = f"did you mean {key}.{close[0]}? " if close else ""
        raise UserError(f"{key}.{name} is not a setting of this encoder nor a fine-tuning setting; {hint}the "
                        f"encoder's settings are {', '.join(own) or '(none)'}, the fine-tuning settings "
                        f"{', '.join(KEYS)}")


def parse(values: dict[str, Any], key: str) -> FineTuning:
    """A :class:`FineTuning` from plain config values, each checked.

    Raises:
        UserError: ``<key>.<setting> must be ..., found ...; e.g. ...`` for the first bad value.
    """
    def bad(name: str, what: str, example: str) -> UserError:
        return UserError(f"{key}.{name} must be {what}, found {_shown(values[name])}; e.g. {key}.{name}={example}")

    out: dict[str, Any] = {}
    for name in ("freeze", "gradient_checkpointing"):
        if name in values:
            if not isinstance(values[name], bool):
                raise bad(name, "true or false", "true")
            out[name] = values[name]
    if values.get("unfreeze_at_epoch") is not None:
        v = values["unfreeze_at_epoch"]
        if not _is_int(v) or v < 0:
            raise bad("unfreeze_at_epoch", "an epoch >= 0 (0-based) or null", "2")
        out["unfreeze_at_epoch"] = v
    if "lr_scale" in values:
        v = values["lr_scale"]
        if not _is_number(v) or v < 0:
            raise bad("lr_scale", "a finite number >= 0", "0.1")
        out["lr_scale"] = float(v)
    if values.get("layer_decay") is not None:
        v = values["layer_decay"]
        if not _is_number(v) or not 0 < v <= 1:
            raise bad("layer_decay", "a number in (0, 1] or null", "0.75")
        out["layer_decay"] = float(v)
    if "adapter" in values:
        if values["adapter"] not in ADAPTERS:
            raise bad("adapter", "null or lora", "lora")
        out["adapter"] = values["adapter"]
    if values.get("lora") is not None:
        out["lora"] = parse_lora(values["lora"], f"{key}.lora")
    for name in ("init_from", "init_prefix"):
        if values.get(name) is not None:
            if not isinstance(values[name], str) or not values[name]:
                raise bad(name, "a string or null", "logs/runs/<time>/checkpoints/best.pt" if name == "init_from"
                          else "encoders.image.")
            out[name] = values[name]
    if "init_prefix" in out and "init_from" not in out:
        raise UserError(f"{key}.init_prefix is set ({out['init_prefix']!r}) but {key}.init_from is not; set "
                        f"{key}.init_from=<run>/checkpoints/best.pt, or remove init_prefix")
    return FineTuning(**out)


def parse_lora(values: Any, key: str) -> LoraSettings:
    """The ``lora`` mapping, each setting checked (``key`` is ``model.encoders.<m>.lora``)."""
    if not isinstance(values, dict):
        raise UserError(f"{key} must be a mapping of {', '.join(LORA_KEYS)}, found {_shown(values)}; e.g. {key}.r=8")
    for name in values:
        if name not in LORA_KEYS:
            close = [LORA_ALIASES[name]] if name in LORA_ALIASES else \
                difflib.get_close_matches(str(name), LORA_KEYS, n=1)
            hint = f"did you mean {key}.{close[0]}? " if close else ""
            raise UserError(f"{key}.{name} is not a LoRA setting; {hint}they are {', '.join(LORA_KEYS)}")
    out: dict[str, Any] = {}
    if "r" in values:
        if not _is_int(values["r"]) or values["r"] < 1:
            raise UserError(f"{key}.r must be a rank >= 1, found {_shown(values['r'])}; e.g. {key}.r=8")
        out["r"] = values["r"]
    if "alpha" in values:
        if not _is_number(values["alpha"]) or values["alpha"] <= 0:
            raise UserError(f"{key}.alpha must be a number > 0, found {_shown(values['alpha'])}; e.g. {key}.alpha=16")
        out["alpha"] = float(values["alpha"])
    if "dropout" in values:
        if not _is_number(values["dropout"]) or not 0 <= values["dropout"] < 1:
            raise UserError(f"{key}.dropout must be in [0, 1), found {_shown(values['dropout'])}; e.g. "
                            f"{key}.dropout=0.1")
        out["dropout"] = float(values["dropout"])
    if "target_modules" in values:
        v = values["target_modules"]
        if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
            out["target_modules"] = list(v)
        elif isinstance(v, str) and v:
            out["target_modules"] = v
        else:
            raise UserError(f"{key}.target_modules must be a list of module names, a regular expression or "
                            f"all-linear, found {_shown(v)}; e.g. {key}.target_modules=[qkv,proj]")
    return LoraSettings(**out)


def check_config(cfg: DictConfig) -> None:
    """Check every encoder's fine-tuning settings (no data needed; :func:`mtmm_train.config.validate`).

    Raises:
        UserError: the first bad setting, in one line.
    """
    encoders = OmegaConf.select(cfg, "model.encoders")
    if not isinstance(encoders, DictConfig):
        return
    for m, node in encoders.items():
        if isinstance(node, DictConfig):
            split(node, f"model.encoders.{m}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _shown(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return "null" if v is None else str(v).lower()
    return repr(v)


# ---------------------------------------------------------------------- applied to a built encoder
def apply(encoder: nn.Module, ft: FineTuning, key: str, modality: str, init: bool = True) -> None:
    """Act on a freshly built encoder: ``init_from``, the LoRA wrapping, freezing, gradient checkpointing.

    The encoder keeps ``ft`` (as ``encoder.fine_tuning``) for :func:`param_groups` and :func:`on_epoch_start`.

    Args:
        encoder: the encoder built at ``key``.
        ft: its settings (:func:`split`).
        key: ``model.encoders.<modality>``, for messages.
        modality: the modality name (the default ``init_prefix``).
        init: load ``init_from`` (False where the weights come from a checkpoint next: ``mtmm-eval``).

    Raises:
        UserError: a missing or unfitting ``init_from``, LoRA targets that match nothing, gradient
            checkpointing or layer-wise decay the encoder cannot do.
    """
    if ft.init_from is not None and init:
        load_init(encoder, ft.init_from, ft.init_prefix or f"encoders.{modality}.", key)
    if ft.adapter == "lora":
        add_lora(encoder, ft.lora, key)
    if ft.layer_decay is not None and getattr(encoder, "num_blocks", 0) < 1:
        raise UserError(f"{key}.layer_decay is {ft.layer_decay:g}, but {type(encoder).__name__} counts no blocks "
                        "(Encoder.num_blocks is 0); use a backbone encoder (timm, hf) or set it to null")
    setattr(encoder, ATTRIBUTE, ft)
    set_frozen(encoder, ft.frozen_at(0))
    if ft.gradient_checkpointing:
        try:
            encoder.set_gradient_checkpointing(True)
        except ComponentError as e:
            raise UserError(e.at(key)) from None


def target(encoder: nn.Module) -> nn.Module:
    """The module the settings act on: the encoder's ``backbone``, or the encoder itself without one."""
    backbone = getattr(encoder, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else encoder


def is_lora(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter (``peft``'s ``lora_A``, ``lora_B``...)."""
    return ".lora_" in f".{name}"


def trainable_part(encoder: nn.Module) -> list[nn.Parameter]:
    """The parameters ``freeze`` and ``unfreeze_at_epoch`` act on: the adapter's under LoRA, else the backbone's."""
    ft: FineTuning | None = getattr(encoder, ATTRIBUTE, None)
    named = target(encoder).named_parameters()
    if ft is not None and ft.adapter == "lora":
        return [p for n, p in named if is_lora(n)]
    return [p for _, p in named]


def set_frozen(encoder: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, eval mode kept: see ``MultiModalModel.train``) or unfreeze the trainable part."""
    for p in trainable_part(encoder):
        p.requires_grad_(not frozen)
    module = target(encoder)
    module.keep_eval = frozen  # MultiModalModel.train leaves a module marked so in eval mode
    if frozen:
        module.eval()


def add_lora(encoder: nn.Module, lora: LoraSettings, key: str) -> None:
    """Wrap the backbone's target layers with LoRA adapters in place (``peft.inject_adapter_in_model``);
    the backbone's own weights stop training.

    Raises:
        UserError: ``peft`` is missing, or ``lora.target_modules`` matches no layer.
    """
    from mtmm_train.data.optional import require

    peft = require("peft", "backbones", f"{key}.adapter=lora", package="peft")
    module = target(encoder)
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules)
    try:
        peft.inject_adapter_in_model(config, module)
    except (ValueError, TypeError, RuntimeError) as e:
        layers = [n for n, m in module.named_modules() if n and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
        shown = ", ".join(layers[:8]) + (", ..." if len(layers) > 8 else "")
        text = " ".join(str(e).split())[:160]
        raise UserError(f"{key}.lora.target_modules {_shown(lora.target_modules)} cannot be adapted ({text}); "
                        f"name layers of {type(module).__name__}, e.g. [{shown}], or use all-linear") from None
    for name, p in module.named_parameters():
        p.requires_grad_(is_lora(name))


def load_init(encoder: nn.Module, path: str, prefix: str, key: str) -> None:
    """Copy the weights under ``prefix`` of a checkpoint's model into ``encoder`` (all of them, exactly).

    Loaded by :func:`mtmm_train.checkpoint.load` (``weights_only=True``, its stored config checked).

    Raises:
        UserError: the file is missing or not a checkpoint, no weight has the prefix, or the weights
            do not fit the encoder (missing, unexpected or of another shape).
    """
    from mtmm_train import checkpoint

    where = f"{key}.init_from"
    if not Path(path).is_file():
        raise UserError(f"{where} '{path}' is not a file; give a checkpoint an earlier mtmm-train run wrote, e.g. "
                        f"{where}=logs/runs/<time>/checkpoints/best.pt")
    try:
        state = checkpoint.load(path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    if not weights:
        prefixes = sorted({".".join(k.split(".")[:2]) + "." for k in state["model"] if k.startswith("encoders.")})
        raise UserError(f"{key}.init_prefix '{prefix}' matches no weight of '{path}'; its encoders are "
                        f"{', '.join(prefixes) or '(none)'}: set {key}.init_prefix to one of them")
    own = encoder.state_dict()
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    problem = (f"{len(missing)} weight(s) of the encoder are not in it (e.g. {missing[0]})" if missing else
               f"it has {len(extra)} weight(s) the encoder lacks (e.g. {prefix}{extra[0]})" if extra else
               f"{prefix}{shapes[0]} is {list(weights[shapes[0]].shape)} there, {list(own[shapes[0]].shape)} here"
               if shapes else None)
    if problem is not None:
        raise UserError(f"{where} '{path}' does not fit {type(encoder).__name__} under the prefix '{prefix}': "
                        f"{problem}; use a checkpoint of the same encoder config, or set {key}.init_prefix")
    encoder.load_state_dict(weights)
    log.info("%s: initialised from %s (%d tensors under '%s')", key, path, len(weights), prefix)


# ---------------------------------------------------------------------- the recipe's hooks
def encoders_of(model: nn.Module) -> dict[str, nn.Module]:
    """modality -> encoder of a :class:`~mtmm_train.model.MultiModalModel` (empty for another module)."""
    encoders = getattr(model, "encoders", None)
    return dict(encoders.items()) if isinstance(encoders, nn.ModuleDict) else {}


def on_epoch_start(model: nn.Module, epoch: int) -> bool:
    """Freeze or unfreeze each encoder with ``unfreeze_at_epoch`` as ``epoch`` (0-based) asks.

    Called at the start of every epoch, a resumed one included, before ``model.train()``: the state
    follows from the epoch alone, so a resumed run freezes exactly as an uninterrupted one. The
    optimizer holds the parameters from the start; while frozen they have no gradient, and the
    optimizer leaves a parameter without a gradient untouched (no update, no decay, no state).

    Returns:
        True when an encoder changed (under torchrun the recipe then wraps the model anew).
    """
    changed = False
    for m, enc in encoders_of(model).items():
        ft: FineTuning | None = getattr(enc, ATTRIBUTE, None)
        if ft is None or ft.unfreeze_at_epoch is None:
            continue
        frozen = ft.frozen_at(epoch)
        if bool(getattr(target(enc), "keep_eval", False)) != frozen:
            set_frozen(enc, frozen)
            changed = True
            log.info("epoch %d: model.encoders.%s %s (unfreeze_at_epoch=%d)", epoch + 1, m,
                     "frozen" if frozen else "unfrozen", ft.unfreeze_at_epoch)
    return changed


def _lr_scales(m: str, enc: nn.Module) -> dict[str, float]:
    """Parameter name (relative to the encoder) -> its learning-rate scale."""
    ft: FineTuning | None = getattr(enc, ATTRIBUTE, None)
    if ft is None:
        return {}
    n = enc.num_blocks if ft.layer_decay is not None else 0
    out = {}
    for name, _ in enc.named_parameters():
        scale = ft.lr_scale
        if ft.layer_decay is not None:
            i = enc.block_index(_plain_name(name))
            if i is not None:
                scale *= ft.layer_decay ** (n - i)
        out[name] = scale
    return out


def _plain_name(name: str) -> str:
    """A parameter name as the encoder had it before LoRA wrapped its layers (for ``block_index``)."""
    name = re.sub(r"\.lora_\w+\.[^.]+(?=\.)", "", name)  # x.lora_A.default.weight -> x.weight
    return name.replace(".base_layer.", ".")


def param_groups(model: nn.Module, others: list[nn.Module], weight_decay: float,
                 lr: float | None) -> list[dict]:
    """The optimizer's parameter groups (:func:`mtmm_train.optim.param_groups`): each encoder's learning-rate
    scale and layer-wise decay, no weight decay on biases and norms (:func:`mtmm_train.optim.no_decay_names`).

    Parameters frozen for good (``freeze: true``, a LoRA-wrapped backbone's own weights) are left
    out; those frozen until ``unfreeze_at_epoch`` are in from the start.

    Args:
        model: the model; ``others``: more modules to train (the balancer), at the optimizer's lr.
        weight_decay: the optimizer's ``weight_decay``; ``lr``: its ``lr`` (needed with a scale other than 1).

    Raises:
        UserError: a learning-rate scale without ``optimizer.lr``.
    """
    scales, later = {}, set()
    for m, enc in encoders_of(model).items():
        scales.update({f"encoders.{m}.{k}": v for k, v in _lr_scales(m, enc).items()})
        ft: FineTuning | None = getattr(enc, ATTRIBUTE, None)
        if ft is not None and ft.unfreeze_at_epoch is not None:
            later.update(id(p) for p in trainable_part(enc))
    params, no_decay = [], set()
    for prefix, module in [("", model), *((f"others{i}.", o) for i, o in enumerate(others))]:
        no_decay.update(prefix + n for n in optim.no_decay_names(module))
        for name, p in module.named_parameters():
            if p.requires_grad or id(p) in later:
                params.append((prefix + name, p, scales.get(prefix + name, 1.0)))
    if lr is None and any(s != 1.0 for _, _, s in params):
        raise UserError("model.encoders.<m>.lr_scale and layer_decay scale optimizer.lr, which is not set; "
                        "set optimizer.lr")
    groups = optim.param_groups(params, no_decay, weight_decay, lr)
    names = {id(p): n for n, p, _ in params}
    for g in groups:  # where the parameters come from, for the log (not read by the optimizer)
        g["modules"] = sorted({_owner(names[id(p)]) for p in g["params"]})
    return groups


def _owner(name: str) -> str:
    parts = name.split(".")
    if parts[0].startswith("others"):
        return "balancer"
    return ".".join(parts[:2]) if parts[0] in ("encoders", "heads") and len(parts) > 2 else parts[0]


def describe_groups(optimizer: Any) -> list[dict[str, Any]]:
    """The optimizer's parameter groups as plain data: name, tensors, parameters, lr, weight decay,
    and the parts of the model they hold (``param_groups.json``)."""
    out = []
    for g in optimizer.param_groups:
        out.append({"name": g.get("name", ""), "tensors": len(g["params"]),
                    "parameters": sum(p.numel() for p in g["params"]),
                    "trainable_now": sum(p.numel() for p in g["params"] if p.requires_grad),
                    "lr": g["lr"], "weight_decay": g.get("weight_decay", 0.0), "modules": list(g.get("modules", []))})
    return out


def format_groups(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`describe_groups` as a table for the log."""
    head = f"{'group':<22} {'tensors':>7} {'parameters':>12} {'lr':>10} {'decay':>7}  modules"
    lines = [head] + [f"{r['name']:<22} {r['tensors']:>7} {r['parameters']:>12,} {r['lr']:>10.4g} "
                      f"{r['weight_decay']:>7.3g}  {', '.join(r['modules'])}" for r in rows]
    return "\n".join(lines)
