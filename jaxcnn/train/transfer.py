"""Transfer learning: start a run from another network's weights, with a new head, some layers
frozen and per-group learning rates.

Yosinski, Clune, Bengio and Lipson, "How transferable are features in deep neural networks?",
NeurIPS 2014, distinguish the two modes the lectures teach:

- *feature extraction*: the pretrained backbone is frozen and only a new classifier (head) is
  trained on the new task (``config.freeze = "backbone"``, or ``config.trainable = "head"``);
- *fine-tuning*: every layer (or the later ones) keeps training from the pretrained values,
  usually at a smaller learning rate than the new head
  (``config.lr_groups = "head=1e-3,backbone=1e-4"``).

The config keys (all off by default):

- ``init_from``: a run directory (its newest checkpoint) or a file of torchvision weights
  (``.npz`` of the state dict's arrays, or ``.pth``/``.pt`` where PyTorch is installed),
  converted by :func:`jaxcnn.models.torch_convert.from_torch`. Every parameter and BatchNorm
  statistic is copied except the head's, which keeps its fresh initialisation for
  ``num_classes`` classes (:func:`transplant`);
- ``head``: the classifier module(s), comma-separated top-level names (``"fc"``, or for
  GoogLeNet ``"fc,aux1/fc2,aux2/fc2"``); ``""`` finds the top-level ``head``/``fc``/
  ``classifier`` Dense layer;
- ``freeze`` / ``trainable``: comma-separated path patterns (``fnmatch`` globs over
  ``"module/submodule/param"``; a pattern naming a module covers everything under it; the
  words ``head`` and ``backbone`` name the head and everything else). Frozen parameters get
  ``optax.set_to_zero()`` inside an ``optax.multi_transform``, so they stay bitwise unchanged
  and carry no optimizer state;
- ``lr_groups``: ``"PATTERN=LR,..."``; a parameter takes the learning rate of the first
  pattern it matches, ``config.lr`` if none. Each group follows ``config.schedule``.

The same from Python: :func:`load_backbone` (a run or torchvision weights),
:func:`transplant` (the backbone's weights into a freshly initialised model),
:func:`replace_head` (a classifier re-initialised for a new class count),
:func:`partition_by_path` (labels for ``optax.multi_transform``) and :func:`freeze` (any
optax optimizer with some parameters fixed), then
``jaxcnn.train.loop.fit(run, variables=..., tx=...)``.

BatchNorm in a frozen backbone: its scale and offset are parameters and stay frozen, but the
train step still normalises with the batch's statistics and updates the running averages
(Ioffe and Szegedy, 2015), as PyTorch does for a backbone with ``requires_grad=False`` left in
``train()`` mode: the statistics adapt to the new data. The experiments' backbones have no
BatchNorm.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import pathlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn.errors import ConfigError, JaxCNNError

FROZEN = "frozen"
DEFAULT = "default"
HEAD_NAMES = ("head", "fc", "classifier")
TORCH_SUFFIXES = (".npz", ".pth", ".pt")
PyTree = Any


@dataclasses.dataclass
class Backbone:
    """Pretrained weights: ``variables`` (``params``, ``batch_stats``), the model they belong
    to, its class count and where they came from."""

    variables: dict
    model: str
    num_classes: int | None
    source: str


# --- paths and patterns ----------------------------------------------------------------------

def paths(tree: PyTree) -> dict[str, Any]:
    """The leaves of a nested dict as ``{"module/sub/param": leaf}``."""
    flat = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat["/".join(str(getattr(k, "key", k)) for k in keys)] = leaf
    return flat


def _prefixes(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` (a glob) names ``path`` or a module that contains it."""
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in _prefixes(path))


def split_list(text: str) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def find_head(params: PyTree, head: str = "") -> list[str]:
    """The module paths of the classifier: ``head`` (comma-separated) or the top-level
    ``head``/``fc``/``classifier`` module with a 2-D kernel."""
    flat = paths(params)
    if head:
        names = split_list(head)
        for name in names:
            if not any(matches(name, p) for p in flat):
                raise ConfigError(f"head {name!r} names no module of the model; its top-level "
                                  f"modules: {', '.join(_modules(flat))}")
        return names
    found = [name for name in HEAD_NAMES if f"{name}/kernel" in flat
             and np.ndim(flat[f"{name}/kernel"]) == 2]
    if not found:
        raise ConfigError("cannot tell which module is the classifier (no top-level "
                          f"{'/'.join(HEAD_NAMES)} Dense layer); name it with config.head, "
                          f"one of: {', '.join(_modules(flat))}")
    return found[:1]


def _modules(flat: Mapping[str, Any]) -> list[str]:
    return sorted({p.split("/")[0] for p in flat})


def partition_by_path(params: PyTree, groups, default: str = DEFAULT,
                      head: str = "") -> PyTree:
    """Labels for ``optax.multi_transform``: each leaf gets the label of the first
    ``(label, patterns)`` of ``groups`` with a pattern matching its path, else ``default``.

    ``head`` and ``backbone`` in a pattern list name the classifier (:func:`find_head`) and
    every other parameter. A pattern matching no parameter raises :class:`ConfigError`.
    """
    flat = paths(params)
    head_paths = None
    resolved = []
    for label, patterns in groups:
        tests = []
        for pattern in patterns:
            if pattern in ("head", "backbone"):
                if head_paths is None:
                    head_paths = find_head(params, head)
                inside = lambda p, hp=tuple(head_paths): any(matches(h, p) for h in hp)  # noqa
                tests.append(inside if pattern == "head" else (lambda p, f=inside: not f(p)))
            else:
                tests.append(lambda p, pat=pattern: matches(pat, p))
            if not any(tests[-1](p) for p in flat):
                raise ConfigError(
                    f"pattern {pattern!r} matches no parameter of the model; patterns are globs "
                    f"over paths like {next(iter(flat), 'conv1/kernel')!r}, or a module name "
                    f"(top-level modules: {', '.join(_modules(flat))}), or head/backbone")
        resolved.append((label, tests))
    labels = {}
    for path in flat:
        labels[path] = next((label for label, tests in resolved if any(t(path) for t in tests)),
                            default)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [labels[p] for p in flat])


def freeze(tx, patterns, head: str = ""):
    """``tx`` for every parameter except those ``patterns`` match (a comma-separated string or
    a list of globs, ``head``/``backbone`` included), which stay fixed: an
    ``optax.multi_transform`` giving them ``optax.set_to_zero()``. For the API; from a config,
    ``config.freeze`` builds the same."""
    import optax

    patterns = split_list(patterns) if isinstance(patterns, str) else list(patterns)
    return optax.multi_transform(
        {DEFAULT: tx, FROZEN: optax.set_to_zero()},
        lambda params: partition_by_path(params, [(FROZEN, patterns)], head=head))


# --- optimizer groups from a config ----------------------------------------------------------

def parse_lr_groups(text: str) -> list[tuple[str, float]]:
    """``"head=1e-3,backbone=1e-4"`` as ``[("head", 1e-3), ("backbone", 1e-4)]``."""
    out = []
    for item in split_list(text):
        pattern, sep, value = item.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = -1.0
        if not sep or not pattern.strip() or lr <= 0:
            raise ConfigError(f"lr_groups entry {item!r} is not PATTERN=LR with a positive LR; "
                              "write e.g. lr_groups='head=1e-3,backbone=1e-4'")
        out.append((pattern.strip(), lr))
    return out


def optimizer_groups(config: ml_collections.ConfigDict):
    """``(labels_fn, {label: lr or None for frozen})`` of the config's ``freeze``,
    ``trainable`` and ``lr_groups``, or ``None`` when it sets none of them."""
    freeze, trainable = split_list(config.get("freeze", "")), split_list(config.get("trainable", ""))
    lr_groups = parse_lr_groups(config.get("lr_groups", ""))
    if not (freeze or trainable or lr_groups):
        return None
    if freeze and trainable:
        raise ConfigError("set config.freeze (what to freeze) or config.trainable (what to "
                          "train; the rest is frozen), not both")
    groups = ([(FROZEN, freeze)] if freeze else []) + [
        (f"group{i}", [pattern]) for i, (pattern, _) in enumerate(lr_groups)]
    rates: dict[str, float | None] = {FROZEN: None, DEFAULT: float(config.lr)}
    rates.update({f"group{i}": lr for i, (_, lr) in enumerate(lr_groups)})
    head = config.get("head", "")

    def labels(params):
        tree = partition_by_path(params, groups, head=head)
        if trainable:  # everything the trainable patterns miss is frozen
            kept = partition_by_path(params, [("trained", trainable)], default=FROZEN, head=head)
            tree = jax.tree.map(lambda label, k: FROZEN if k == FROZEN else label, tree, kept)
        return tree

    return labels, rates


# --- loading and transplanting weights -------------------------------------------------------

def load_backbone(source: str | pathlib.Path, model: str | None = None,
                  **model_kwargs) -> Backbone:
    """Weights to start from: a run directory (its newest good checkpoint) or torchvision
    weights (``.npz``/``.pth``/``.pt``) of ``model``."""
    path = pathlib.Path(source)
    if path.is_dir():
        return _from_run(path)
    if path.suffix in TORCH_SUFFIXES and path.is_file():
        if not model:
            raise ConfigError(f"torchvision weights {path} need the model they belong to "
                              "(config.model)")
        from jaxcnn.models.torch_convert import from_torch

        variables = from_torch(model, _read_state_dict(path), **model_kwargs)
        variables.setdefault("batch_stats", {})
        return Backbone(variables, model, None, str(path))
    raise ConfigError(f"init_from={str(source)!r} is neither a run directory nor a file of "
                      f"torchvision weights ({', '.join(TORCH_SUFFIXES)}); pass the workdir of "
                      "a finished `jaxcnn train` run or a converted state dict")


def _from_run(workdir: pathlib.Path) -> Backbone:
    from jaxcnn import data
    from jaxcnn.train import rundir
    from jaxcnn.train.checkpoint import Checkpoints
    from jaxcnn.train.loop import new_state, restore

    config = rundir.read_run_config(workdir)
    checkpoints = Checkpoints(workdir)
    try:
        if checkpoints.latest_step() is None:
            raise ConfigError(f"init_from={str(workdir)!r} holds no checkpoint yet; train it "
                              "first (at least one epoch)")
        spec = data.dataset_spec(config.dataset, config.get("data_dir") or None,
                                 config.get("manual_dir") or None)
        state, _ = restore(checkpoints, new_state(config, spec), config.num_classes)
    finally:
        checkpoints.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Backbone(jax.device_get(variables), config.model, config.num_classes, str(workdir))


def _read_state_dict(path: pathlib.Path) -> dict:
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    try:
        import torch
    except ImportError:
        raise JaxCNNError(f"reading {path} needs PyTorch; without it, save the state dict as "
                          "NumPy arrays: np.savez(f, **{k: v.numpy() for k, v in "
                          "sd.items()})") from None
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def replace_head(params: PyTree, num_classes: int, key: jax.Array, head: str = "",
                 kernel_init: Callable = nn.initializers.lecun_normal()) -> PyTree:
    """``params`` with the classifier re-initialised for ``num_classes`` outputs: its kernels
    drawn by ``kernel_init`` with the old fan-in, its biases zero."""
    head_paths = find_head(params, head)
    flat = paths(params)
    new = {}
    for index, (path, leaf) in enumerate(flat.items()):
        if any(matches(h, path) for h in head_paths):
            shape = (*np.shape(leaf)[:-1], num_classes)
            if path.endswith("kernel"):
                leaf = kernel_init(jax.random.fold_in(key, index), shape, jnp.float32)
            else:
                leaf = jnp.zeros(shape, jnp.asarray(leaf).dtype)
        new[path] = leaf
    return _unflatten(new)


def transplant(target: dict, source: dict, head: str = "") -> dict:
    """``target`` variables (a freshly initialised model) with every leaf taken from
    ``source`` (the backbone) except those of the head, which keep ``target``'s values.

    The two must be the same architecture: a missing parameter or a shape that differs outside
    the head raises :class:`ConfigError` naming it.
    """
    head_paths = find_head(target["params"], head)
    out = {}
    for collection, tree in target.items():
        src = paths(source.get(collection, {}))
        new = {}
        for path, leaf in paths(tree).items():
            if any(matches(h, path) for h in head_paths):
                new[path] = leaf
            elif path not in src:
                raise ConfigError(f"the backbone has no {collection} {path!r}: is it the same "
                                  "architecture as config.model?")
            elif np.shape(src[path]) != np.shape(leaf):
                raise ConfigError(
                    f"{collection} {path!r} has shape {np.shape(src[path])} in the backbone but "
                    f"{np.shape(leaf)} in this model; if it is part of the classifier, add it "
                    "to config.head")
            else:
                new[path] = jnp.asarray(src[path], jnp.asarray(leaf).dtype)
        out[collection] = _unflatten(new) if new else tree
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, name = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = leaf
    return tree


def start_from(state, config: ml_collections.ConfigDict, variables: dict | None = None,
               log=print):
    """``state`` with the weights of ``variables``, or of ``config.init_from`` (head kept as
    initialised), and its optimizer state initialised for them."""
    if variables is None and not config.get("init_from"):
        return state
    if variables is None:
        backbone = load_backbone(config.init_from, config.model)
        variables = transplant({"params": state.params, "batch_stats": state.batch_stats},
                               backbone.variables, config.get("head", ""))
        log(f"initialised from {backbone.source} ({backbone.model}); head "
            f"{', '.join(find_head(state.params, config.get('head', '')))} re-initialised "
            f"for {config.num_classes} classes")
    params = variables["params"]
    return state.replace(params=params, batch_stats=variables.get("batch_stats", {}),
                         opt_state=state.tx.init(params))


def check(config: ml_collections.ConfigDict, params: PyTree) -> None:
    """Checks ``init_from``, ``head`` and the optimizer patterns against the model's
    parameters (shapes suffice), before anything is compiled or written."""
    source = config.get("init_from", "")
    if source:
        path = pathlib.Path(source)
        if not (path.is_dir() or (path.is_file() and path.suffix in TORCH_SUFFIXES)):
            raise ConfigError(f"init_from={source!r} is neither a run directory nor a file of "
                              f"torchvision weights ({', '.join(TORCH_SUFFIXES)}); pass the "
                              "workdir of a finished `jaxcnn train` run")
        find_head(params, config.get("head", ""))
    groups = optimizer_groups(config)
    if groups is not None:
        groups[0](params)
