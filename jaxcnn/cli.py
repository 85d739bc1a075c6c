"""The ``jaxcnn`` command: ``train``, ``eval`` (and more subcommands as the library grows).

Configs follow the Flax examples: ``--config FILE`` names a Python file with ``get_config()``,
and ``--config.KEY=VALUE`` overrides any key. The common keys have their own options
(``--model``, ``--epochs``...), which win over the config file. Every input error is one line
on stderr and exit code 2, before anything is compiled or written.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

from jaxcnn.errors import DivergedError, JaxCNNError

# Options that set a config key of the same name (dashes become underscores).
CONFIG_OPTIONS = {
    "--model": (str, "model name (see `jaxcnn models`)"),
    "--dataset": (str, "TFDS dataset name; 'digits' is offline"),
    "--epochs": (int, "total number of epochs (with --resume: the new total)"),
    "--batch-size": (int, "training batch size"),
    "--lr": (float, "learning rate"),
    "--seed": (int, "random seed of initialisation, data order and dropout"),
    "--data-dir": (str, "TFDS data directory"),
    "--manual-dir": (str, "folder of the dataset's original files (offline build)"),
    "--augment": (str, "augmentations, e.g. crop:4,flip,rotate:10,noise:0.02"),
    "--parallel": (str, "jit (mesh + shardings, default) or pmap"),
    "--dtype": (str, "compute precision: float32, bfloat16, or float16 with dynamic loss "
                     "scaling (parameters and optimizer state stay float32)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxcnn", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (default: LeNet-5 on the offline digits)",
                                epilog="Any config key: --config.KEY=VALUE")
    for flag, (kind, text) in CONFIG_OPTIONS.items():
        train.add_argument(flag, type=kind, default=None, help=text)
    train.add_argument("--config", dest="config_file", default=None,
                       help="Python file defining get_config() (ml_collections)")
    train.add_argument("--workdir", default=None,
                       help="run directory (default: a new timestamped folder under runs/)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --workdir from its latest checkpoint")
    runtime = train.add_argument_group("devices and hosts")
    runtime.add_argument("--num-cpu-devices", type=int, default=None,
                         help="simulate N CPU devices (development and tests)")
    runtime.add_argument("--coordinator", default=None,
                         help="HOST:PORT of process 0, for a multi-process run; 'auto' lets "
                              "JAX read it from the cluster (TPU pods, SLURM)")
    runtime.add_argument("--num-processes", type=int, default=None)
    runtime.add_argument("--process-id", type=int, default=None)
    runtime.add_argument("--distributed-timeout", type=int, default=120,
                         help="seconds to wait for every process to join (default 120)")

    evaluate = commands.add_parser("eval", help="evaluate a run's latest checkpoint")
    evaluate.add_argument("--workdir", required=True, help="the run directory")
    evaluate.add_argument("--split", default="test", help="dataset split (default: test)")

    commands.add_parser("models", help="list the registered models")

    experiment = commands.add_parser(
        "experiment", help="run a scripted experiment of experiments/ (results table, figures)")
    experiment.add_argument("name", help="mnist_case_study, lenet5, fashion_mnist, depth, init, "
                                         "regularization, augmentation, transfer, optimizers")
    experiment.add_argument("--quick", action="store_true", help="a tiny budget (CI)")
    experiment.add_argument("--workdir", default=None,
                            help="default runs/experiments/NAME (NAME-quick with --quick)")
    experiment.add_argument("--restart", action="store_true",
                            help="delete the workdir first instead of reusing finished arms")
    experiment.add_argument("--data-root", default=None,
                            help="folder holding mnist/ and fashion_mnist/ original files")
    experiment.add_argument("--data-dir", default=None, help="TFDS data directory")

    predict = commands.add_parser("predict", help="top-5 classes of image files by a run's model")
    predict.add_argument("--workdir", required=True, help="the run directory")
    predict.add_argument("images", nargs="+", help="PNG or JPEG files")

    viz = commands.add_parser("viz", help="figures of a finished run into WORKDIR/figures/")
    viz.add_argument("--workdir", required=True, help="the run directory")
    viz.add_argument("--max-examples", type=int, default=None,
                     help="use only the first N test examples")

    for command in (train, evaluate, experiment, predict, viz):
        command.add_argument(
            "--compile-cache", default=None, metavar="DIR|off",
            help="persistent XLA compilation cache (default: $JAXCNN_COMPILE_CACHE, else "
                 "~/.cache/jaxcnn/xla); 'off' disables it")

    summary = commands.add_parser("summary", help="layers, shapes, parameters and MACs of a model")
    summary.add_argument("name", help="registered model name")
    summary.add_argument("--input-shape", default=None, help="H,W,C (default: the model's own)")
    summary.add_argument("--num-classes", type=int, default=None)
    summary.add_argument("--depth", type=int, default=None, help="hide modules nested deeper")
    return parser


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` from the other arguments."""
    rest, overrides = [], {}
    args = iter(argv)
    for arg in args:
        if arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                value = next(args, None)
                if value is None:
                    raise JaxCNNError(f"--config.{key} needs a value: --config.{key}=VALUE")
            overrides[key] = value
        else:
            rest.append(arg)
    return rest, overrides


def run_train(args: argparse.Namespace, overrides: dict[str, str]) -> None:
    from jaxcnn.configs.loading import apply_overrides, load_config
    from jaxcnn.train import loop, rundir
    from jaxcnn.train.runtime import setup_runtime

    setup_runtime(num_cpu_devices=args.num_cpu_devices, coordinator=args.coordinator,
                  num_processes=args.num_processes, process_id=args.process_id,
                  timeout=args.distributed_timeout)

    if args.resume and not args.workdir:
        raise JaxCNNError("--resume needs --workdir DIR, the run to continue")
    if args.resume:
        if args.config_file:
            raise JaxCNNError("--resume continues the stored config; drop --config FILE "
                              "(override single keys with --config.KEY=VALUE)")
        config = rundir.read_run_config(args.workdir)
    else:
        config = load_config(args.config_file)
    apply_overrides(config, overrides)
    for flag in CONFIG_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            apply_overrides(config, {flag[2:].replace("-", "_"): value})
    run = loop.prepare(config, args.workdir, resume=args.resume)
    main = jax.process_index() == 0
    if main:
        print(f"training {config.model} on {config.dataset} for {config.epochs} epochs; "
              f"workdir {run.workdir}", flush=True)
    outcome = loop.fit(run)
    if main and outcome.records and not outcome.stopped_by:
        last = outcome.records[-1]
        print(f"done: test accuracy {100 * last['test_accuracy']:.2f}% after epoch "
              f"{last['epoch']}; run in {run.workdir}")


def run_eval(args: argparse.Namespace) -> None:
    from jaxcnn.train import loop

    print(json.dumps(loop.evaluate_run(args.workdir, args.split)))


def run_experiment(args: argparse.Namespace) -> None:
    """``jaxcnn experiment NAME``: the experiments live in the source checkout, next to jaxcnn/."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if not (root / "experiments" / "run.py").is_file():
        raise JaxCNNError(f"the experiments ship with jaxcnn's source checkout (experiments/), "
                          f"not found next to {root / 'jaxcnn'}; clone the repository and run "
                          "`python -m experiments.run NAME` there")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from experiments.run import run_from_args

    run_from_args(args)


def run_summary(args: argparse.Namespace) -> None:
    from jaxcnn.models.summary import format_summary, summarize

    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise JaxCNNError(f"--input-shape takes H,W,C (three positive integers, e.g. "
                              f"224,224,3), got {args.input_shape!r}")
    print(format_summary(summarize(args.name, shape, args.num_classes), max_depth=args.depth))


# Commands that compile train or eval steps, and so use the persistent compilation cache.
COMPILING_COMMANDS = ("train", "eval", "experiment", "predict", "viz")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        rest, overrides = split_config_overrides(argv)
        args = parser.parse_args(rest)
        if args.command in COMPILING_COMMANDS:
            from jaxcnn.train.compile_cache import enable_compilation_cache

            enable_compilation_cache(args.compile_cache)
        if overrides and args.command != "train":
            raise JaxCNNError(f"--config.KEY=VALUE applies to `jaxcnn train`, not `{args.command}`")
        if args.command == "train":
            run_train(args, overrides)
        elif args.command == "eval":
            run_eval(args)
        elif args.command == "predict":
            from jaxcnn.train.inference import predict_files

            for result in predict_files(args.workdir, args.images):
                tops = "  ".join(f"{name} {100 * p:.1f}%" for name, p in result["top"])
                print(f"{result['file']}: {tops}")
        elif args.command == "viz":
            from jaxcnn.viz import write_all

            for path in write_all(pathlib.Path(args.workdir), args.max_examples):
                print(path)
        elif args.command == "summary":
            run_summary(args)
        elif args.command == "experiment":
            run_experiment(args)
        elif args.command == "models":
            from jaxcnn.models import list_models, model_info

            for name in list_models():
                info = model_info(name)
                print(f"{name:16s} {'x'.join(map(str, info.input_shape)):>10s}  {info.paper}")
    except JaxCNNError as err:
        print(f"jaxcnn: error: {err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"jaxcnn: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
