"""Summaries of the experiments (table rows, a headline, the checks of the claim) and figures.

Each experiment names one summary function here (``Experiment.analysis``); it takes the
experiment and its trained arms (:class:`experiments.run.ArmResult`) and returns
``{"headline": str, "rows": [dict], "checks": {name: bool}}``. A check is a direction the
claim predicts (deeper plain network trains worse, constant init does not learn, ...);
``results.md`` shows whether this run confirmed it.
"""
from __future__ import annotations

import functools
import os
import pathlib
import platform

import jax

CHANCE_ACCURACY = 0.2  # "does not learn": at most this test accuracy on ten classes


# --- helpers ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _spec(dataset: str, data_dir: str, manual_dir: str):
    from jaxcnn import data

    return data.dataset_spec(dataset, data_dir or None, manual_dir or None)


def _spec_of(config: dict):
    return _spec(config["dataset"], config.get("data_dir", ""), config.get("manual_dir", ""))


def train_examples(config: dict) -> int:
    return _spec_of(config).split_size(config.get("train_split", "train"))


def num_params(config: dict) -> int:
    """Trainable parameters of the arm's model (built as the run built it)."""
    import jax.numpy as jnp
    import ml_collections

    from jaxcnn.train.builder import build_model

    shape = _spec_of(config).input_shape(config.get("image_size") or None)
    model = build_model(ml_collections.ConfigDict(config), shape)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    return sum(int(x.size) for x in jax.tree.leaves(shapes["params"]))


def pct(value: float) -> float:
    return round(100.0 * value, 2)


def test_accuracy(arm) -> float:
    """The arm's final test accuracy: on the whole test split where it was measured at the
    end (curves on a slice), else the last epoch's."""
    return arm.final["test_accuracy"] if arm.final else arm.records[-1]["test_accuracy"]


def row(arm, **extra) -> dict:
    """The common columns of one arm: model, data, epochs, final accuracies, wall time."""
    last = arm.records[-1]
    acc = test_accuracy(arm)
    out = {"arm": arm.name, "model": arm.config["model"],
           "train examples": train_examples(arm.config), "epochs": last["epoch"],
           "train acc %": pct(last["train_accuracy"]), "test acc %": pct(acc),
           "test error %": pct(1 - acc), "wall s": round(arm.wall_seconds, 1)}
    out.update(extra)
    return out


def train_seconds(arm, upto: int | None = None) -> float:
    """Seconds of the epochs (training and evaluation, no compilation) up to epoch ``upto``."""
    return sum(r["epoch_seconds"] for r in arm.records[:upto])


def machine() -> dict:
    return {"cpus": os.cpu_count(), "backend": jax.default_backend(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}  # 1, 5, 15 min


# --- one summary per experiment --------------------------------------------------------------

def mnist_case_study(exp, arms) -> dict:
    arm = arms["mnist_cnn"]
    hit = next((r for r in arm.records if r["test_accuracy"] >= exp.target), None)
    best = max(r["test_accuracy"] for r in arm.records)
    if hit:
        seconds = train_seconds(arm, hit["epoch"])
        headline = (f"mnist_cnn reached {pct(hit['test_accuracy'])}% test accuracy after "
                    f"{hit['epoch']} epoch(s): {seconds:.0f} s of epochs, {arm.wall_seconds:.0f} s "
                    "wall with compilation")
    else:
        headline = (f"mnist_cnn did not reach {pct(exp.target)}% in {len(arm.records)} epochs "
                    f"(best {pct(best)}%)")
    extra = {"epochs to target": hit["epoch"] if hit else None,
             "epoch seconds to target": round(train_seconds(arm, hit["epoch"]), 1) if hit else None}
    return {"headline": headline, "rows": [row(arm, **extra)],
            "checks": {f"reaches {pct(exp.target)}%": hit is not None}}


def lenet5(exp, arms) -> dict:
    rows = [row(a, params=num_params(a.config)) for a in arms.values()]
    headline = "; ".join(f"{r['model']} {r['test error %']}% test error after {r['epochs']} "
                         f"epochs" for r in rows) + " (paper: 0.95% after 20 passes)"
    return {"headline": headline, "rows": rows,
            "checks": {"every LeNet-5 below 2% test error": all(r["test error %"] < 2 for r in rows)}}


def fashion_mnist(exp, arms) -> dict:
    rows = [row(a, params=num_params(a.config), **{"epoch s (CPU)": round(train_seconds(a), 1)})
            for a in arms.values()]
    small = rows[0]
    headline = "; ".join(f"{r['arm']} ({r['params']:,} params) {r['test acc %']}% in "
                         f"{r['wall s']:.0f} s" for r in rows)
    return {"headline": headline, "rows": rows,
            "checks": {"2-conv network under 100K parameters": small["params"] < 100_000}}


def depth(exp, arms) -> dict:
    err = {name: 1 - a.records[-1]["train_accuracy"] for name, a in arms.items()}
    rows = [row(a, **{"train error %": pct(err[name])}) for name, a in arms.items()]
    checks = {"plain56 trains worse than plain20": err["plain56"] > err["plain20"],
              "resnet56 trains better than resnet20": err["resnet56"] < err["resnet20"]}
    headline = ("final training error: " + ", ".join(f"{n} {pct(e)}%" for n, e in err.items()))
    return {"headline": headline, "rows": rows, "checks": checks}


def init(exp, arms) -> dict:
    acc = {name: test_accuracy(a) for name, a in arms.items()}
    rows = [row(a) for a in arms.values()]
    checks = {"constant init does not learn": acc["constant"] <= CHANCE_ACCURACY,
              "Glorot and He learn": min(acc["glorot_uniform"], acc["he_normal"]) > 0.5}
    if "large" in acc:
        checks["large init learns slower than Glorot"] = acc["large"] < acc["glorot_uniform"]
    headline = "final test accuracy: " + ", ".join(f"{n} {pct(v)}%" for n, v in acc.items())
    return {"headline": headline, "rows": rows, "checks": checks}


def regularization(exp, arms) -> dict:
    rows = [row(a, **{"train-test gap %": pct(a.records[-1]["train_accuracy"]
                                             - test_accuracy(a))})
            for a in arms.values()]
    test = {r["arm"]: r["test acc %"] for r in rows}
    headline = "final test accuracy: " + ", ".join(f"{n} {v}%" for n, v in test.items())
    checks = {"dropout narrows the train-test gap": rows[1]["train-test gap %"]
              < rows[0]["train-test gap %"]}
    return {"headline": headline, "rows": rows, "checks": checks}


def augmentation(exp, arms) -> dict:
    rows = [row(a, augment=a.config.get("augment") or "none") for a in arms.values()]
    gap = round(rows[1]["test acc %"] - rows[0]["test acc %"], 2)
    headline = (f"augmentation ({rows[1]['augment']}) changes test accuracy by {gap:+.2f} points "
                f"({rows[0]['test acc %']}% -> {rows[1]['test acc %']}%)")
    return {"headline": headline, "rows": rows,
            "checks": {"both arms trained": all(len(a.records) for a in arms.values()),
                       "augmentation helps": gap > 0}}


def _transfer_mode(config: dict) -> str:
    if not config.get("init_from"):
        return "random start"
    for key in ("trainable", "freeze", "lr_groups"):
        if config.get(key):
            return f"{key}={config[key]}"
    return "fine-tuning"


def transfer(exp, arms) -> dict:
    rows = [row(a, dataset=a.config["dataset"], mode=_transfer_mode(a.config),
                **{"epoch-1 test acc %": pct(a.records[0]["test_accuracy"])})
            for a in arms.values()]
    acc = {name: test_accuracy(a) for name, a in arms.items()}
    headline = ("Fashion-MNIST test accuracy with few labels: " + ", ".join(
        f"{n} {pct(v)}%" for n, v in acc.items() if n != "pretrain"))
    checks = {"fine-tuning beats scratch": acc["fine_tuning"] > acc["scratch"],
              "feature extraction beats chance": acc["feature_extraction"] > CHANCE_ACCURACY}
    return {"headline": headline, "rows": rows, "checks": checks}


def optimizers(exp, arms) -> dict:
    rows = [row(a, optimizer=a.config["optimizer"], lr=a.config["lr"],
                **{"epoch-1 test acc %": pct(a.records[0]["test_accuracy"])})
            for a in arms.values()]
    acc = {name: test_accuracy(a) for name, a in arms.items()}
    headline = "final test accuracy: " + ", ".join(f"{n} {pct(v)}%" for n, v in acc.items())
    return {"headline": headline, "rows": rows,
            "checks": {"every optimiser learns": min(acc.values()) > 0.5}}


# --- figures and the markdown report ---------------------------------------------------------

def plot(exp, arms, workdir: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Every arm's curves on one figure, ``WORKDIR/<name>.png``: training loss and test
    accuracy (``figure="accuracy"``), or training and test error (``"error"``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    drawn = {a: r for a, r in arms.items() if not exp.figure_arms or a in exp.figure_arms}
    for index, (arm, result) in enumerate(drawn.items()):
        epochs = [r["epoch"] for r in result.records]
        style = {"color": f"C{index}", "marker": "o", "markersize": 3, "label": arm}
        if exp.figure == "error":
            left.plot(epochs, [100 * (1 - r["train_accuracy"]) for r in result.records], **style)
            right.plot(epochs, [100 * (1 - r["test_accuracy"]) for r in result.records], **style)
        else:
            left.plot(epochs, [r["train_loss"] for r in result.records], **style)
            right.plot(epochs, [100 * r["test_accuracy"] for r in result.records], **style)
    if exp.figure == "error":
        left.set(xlabel="epoch", ylabel="error (%)", title="training error")
        right.set(xlabel="epoch", ylabel="error (%)", title="test error")
    else:
        left.set(xlabel="epoch", ylabel="cross-entropy", title="training loss", yscale="log")
        right.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(fontsize=8)
    fig.suptitle(exp.title, fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(workdir) / f"{name}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


def markdown(results: dict) -> str:
    """``results.md``: what was claimed, what this run measured, the table, the checks."""
    summary = results["summary"]
    lines = [f"# {results['title']}{' (quick mode)' if results['quick'] else ''}", "",
             f"- Claim: {results['claim']}", f"- Published: {results['published']}",
             f"- Budget: {results['budget']}{' (full settings; --quick trains far less)' if results['quick'] else ''}",
             f"- Command: `{results['command']}`",
             f"- Wall time: {results['wall_seconds']:.0f} s of training runs "
             f"({results['machine']['cpus']} CPUs, {results['machine']['backend']})", "",
             f"**Result:** {summary['headline']}", ""]
    rows = summary["rows"]
    columns = list(dict.fromkeys(key for r in rows for key in r))
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    lines += ["", "Checks of the claim's direction:", ""]
    lines += [f"- {'yes' if ok else 'NO'}: {check}" for check, ok in summary["checks"].items()]
    lines += [""] + [f"![{f}]({f})" for f in results["figures"]]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:,}"
    return str(value)
