"""Runs a scripted experiment end to end: ``python -m experiments.run NAME [--quick]``.

Every arm of the experiment (:mod:`experiments.spec`) is an ordinary jaxcnn run trained by
:func:`jaxcnn.train.loop.fit` in ``WORKDIR/<arm>``; the experiment's summary
(:mod:`experiments.analysis`) then writes ``results.json``, ``results.md`` and its figure into
``WORKDIR`` (default ``runs/experiments/<name>``, ``<name>-quick`` for ``--quick``).

An arm whose directory already holds its finished run is reused, a partial one is resumed,
so an interrupted experiment continues where it stopped; ``--restart`` deletes the workdir
first. The original MNIST / Fashion-MNIST files are looked up in ``--data-root`` (default
``$JAXCNN_SHARED_DATA`` or ``../shared/data``), in a folder named like the dataset.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import sys
import time

import ml_collections

from jaxcnn.errors import ConfigError, DivergedError, JaxCNNError, unknown

from experiments import nets  # noqa: F401  (registers lecture_cnn)
from experiments.spec import Experiment, apply

NAMES = ("mnist_case_study", "lenet5", "fashion_mnist", "depth", "init", "regularization",
         "augmentation", "transfer", "optimizers")
ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class ArmResult:
    """One trained arm: its per-epoch records, the wall time its training took, its config."""

    name: str
    records: list
    wall_seconds: float
    config: dict
    workdir: str
    final: dict | None = None  # the last checkpoint on the whole test split (full settings)


def get_experiment(name: str) -> Experiment:
    """The :class:`Experiment` called ``name``; unknown names raise listing the known ones."""
    if name not in NAMES:
        raise unknown("experiment", name, NAMES)
    return importlib.import_module(f"experiments.configs.{name}").get_experiment()


def default_data_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def arm_config(exp: Experiment, arm: str, quick: bool, workdir: pathlib.Path,
               data_root: pathlib.Path | None = None,
               data_dir: str | None = None) -> ml_collections.ConfigDict:
    """The full training config of ``arm``: base, the arm's overrides, then quick mode's."""
    layers = [exp.arms[arm]] + ([exp.quick, exp.quick_arms.get(arm, {})] if quick else [])
    config = copy.deepcopy(exp.base)
    for overrides in layers:  # applied in turn: model_kwargs=None empties, a dict merges
        overrides = dict(overrides)
        for key, value in overrides.items():
            if isinstance(value, str) and value.startswith("@"):
                names = list(exp.arms)
                if value[1:] not in names or names.index(value[1:]) >= names.index(arm):
                    raise ConfigError(f"arm {arm!r}: {key}={value!r} must name an earlier arm")
                overrides[key] = str(workdir / value[1:])
        apply(config, overrides)
    if data_dir:
        config.data_dir = str(data_dir)
    if not config.manual_dir and data_root and (pathlib.Path(data_root) / config.dataset).is_dir():
        config.manual_dir = str(pathlib.Path(data_root) / config.dataset)
    return config


def train_arm(name: str, config: ml_collections.ConfigDict, workdir: pathlib.Path,
              log=print, final: bool = True) -> ArmResult:
    """Trains one arm in ``workdir`` (reusing a finished run there, resuming a partial one).
    ``final``: also measure the last checkpoint on the whole test split where the curves used
    a slice of it."""
    from jaxcnn.train import history, loop

    timing = workdir / "timing.json"
    wall = json.loads(timing.read_text())["wall_seconds"] if timing.is_file() else 0.0
    records = history.read_history(workdir)
    if (workdir / "config.json").is_file():
        stored = loop.rundir.read_run_config(workdir).to_dict()
        loose = {"num_classes", "manual_dir", "data_dir"}
        wanted = json.loads(config.to_json())  # as stored: tuples become lists
        changed = sorted(k for k in set(stored) | set(wanted) if k not in loose
                         and stored.get(k) != wanted.get(k))
        if changed:
            raise ConfigError(f"{workdir} holds a run with other settings ({', '.join(changed)}"
                              "); pass --restart to train the experiment afresh")
    if len(records) < config.epochs:
        began = time.perf_counter()
        run = loop.prepare(copy.deepcopy(config), str(workdir),
                           resume=(workdir / "config.json").is_file())
        outcome = loop.fit(run, log=lambda msg: log(f"[{name}] {msg}"))
        wall += time.perf_counter() - began
        timing.write_text(json.dumps({"wall_seconds": wall}) + "\n")
        if outcome.stopped_by:
            raise KeyboardInterrupt(f"{outcome.stopped_by} received during arm {name!r}")
        records = outcome.records
    stored = loop.rundir.read_run_config(workdir).to_dict()
    return ArmResult(name, records, wall, stored, str(workdir),
                     final_test(workdir, config) if final else None)


def final_test(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> dict | None:
    """The finished arm's accuracy on the whole ``test`` split when its curves were measured on
    a slice of it (``eval_split="test[:2000]"``); cached in ``final_test.json``."""
    from jaxcnn.train import loop

    if config.eval_split == "test":
        return None
    path = workdir / "final_test.json"
    if not path.is_file():
        path.write_text(json.dumps(loop.evaluate_run(workdir, "test")) + "\n")
    return json.loads(path.read_text())


def run_experiment(name: str, quick: bool = False, workdir: str | pathlib.Path | None = None,
                   restart: bool = False, data_root: str | pathlib.Path | None = None,
                   data_dir: str | None = None, log=print) -> dict:
    """Runs experiment ``name`` and writes its results; returns ``results.json``'s content."""
    from experiments import analysis
    from jaxcnn.train.builder import build_model

    exp = get_experiment(name)
    workdir = pathlib.Path(workdir or f"runs/experiments/{name}{'-quick' if quick else ''}")
    data_root = pathlib.Path(data_root) if data_root else default_data_root()
    configs = {arm: arm_config(exp, arm, quick, workdir, data_root, data_dir) for arm in exp.arms}
    for config in configs.values():  # every arm's model and arguments, before any training
        build_model(config, (1, 1, 1))

    if restart and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    arms = {}
    for arm, config in configs.items():
        log(f"== {name}: arm {arm} ({config.model} on {config.dataset} "
            f"{config.train_split}, {config.epochs} epochs)")
        arms[arm] = train_arm(arm, config, workdir / arm, log, final=not quick)
    summary = getattr(analysis, exp.analysis)(exp, arms)
    figures = analysis.plot(exp, arms, workdir, name) if exp.figure else []
    results = {
        "experiment": name, "title": exp.title, "claim": exp.claim,
        "published": exp.published, "quick": quick, "budget": exp.budget,
        "command": f"python -m experiments.run {name}{' --quick' if quick else ''}",
        "wall_seconds": sum(a.wall_seconds for a in arms.values()),
        "run_seconds": time.perf_counter() - began,
        "machine": analysis.machine(),
        "summary": summary, "figures": [f.name for f in figures],
        "arms": {arm: {"workdir": r.workdir, "wall_seconds": r.wall_seconds,
                       "overrides": _jsonable(exp.arms[arm]), "final_test": r.final,
                       "records": r.records}
                 for arm, r in arms.items()},
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (workdir / "results.md").write_text(analysis.markdown(results))
    log(f"== {name}: {summary['headline']}")
    log(f"results in {workdir / 'results.md'}")
    return results


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m experiments.run`` and ``jaxcnn experiment``."""
    parser.add_argument("name", help=f"the experiment: {', '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget that finishes in well under a minute (CI)")
    parser.add_argument("--workdir", default=None,
                        help="where the arms and results go (default runs/experiments/NAME)")
    parser.add_argument("--restart", action="store_true",
                        help="delete the workdir first instead of reusing finished arms")
    parser.add_argument("--data-root", default=None,
                        help="folder with mnist/ and fashion_mnist/ original files "
                             "(default $JAXCNN_SHARED_DATA or ../shared/data)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")


def run_from_args(args: argparse.Namespace) -> dict:
    return run_experiment(args.name, quick=args.quick, workdir=args.workdir,
                          restart=args.restart, data_root=args.data_root, data_dir=args.data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.run",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except JaxCNNError as err:
        print(f"experiments: error: {err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"experiments: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
