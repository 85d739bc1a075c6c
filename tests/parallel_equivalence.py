"""Trains on one device and data parallel over N simulated CPU devices (jit and pmap) on the same
global batches, printing relative differences of parameters, batch statistics and evaluation
metrics as JSON. Run by tests/test_parallel.py in a fresh process (the device count is fixed
at start):

    python tests/parallel_equivalence.py --devices 8 --model resnet20 --at 1,2,5,10,20

``--at`` adds the whole-vector relative difference of the parameters (and batch statistics)
after each listed step; ``--ghost`` compares per-device ("ghost") BatchNorm statistics with one
device computing them per group of the batch; ``--x64`` trains in float64.
"""
import argparse
import json

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--model", default="lenet5")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--x64", action="store_true", help="train in float64 (exactness check)")
parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"),
                    help="adam (lr 1e-3) or sgd (lr 0.1 with momentum 0.9)")
parser.add_argument("--lr", type=float, default=None)
parser.add_argument("--eps", type=float, default=1e-8, help="Adam's epsilon")
parser.add_argument("--ghost", action="store_true", help="per-device BatchNorm statistics")
parser.add_argument("--at", default="", help="steps after which to report, e.g. 1,2,5,10,20")
parser.add_argument("--modes", default="jit,pmap",
                    help="jit, pmap, and/or perturbed: one device from parameters perturbed by "
                         "float32 rounding (relative 6e-8), the sensitivity of training itself")
parser.add_argument("--two-pass-variance", action="store_true",
                    help="BatchNorm variance as mean((x - mean)^2), not mean(x^2) - mean^2")
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)
jax.config.update("jax_enable_x64", args.x64)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from jaxcnn.data import eval_batches  # noqa: E402
from jaxcnn.data.digits import digits_to_mnist_form  # noqa: E402
from jaxcnn.models import get_model, model_info  # noqa: E402
from jaxcnn.train import create_train_state, train_step  # noqa: E402
from jaxcnn.train.loop import evaluate  # noqa: E402
from jaxcnn.train.parallel import DataParallel  # noqa: E402

if args.two_pass_variance:
    from flax.linen import normalization

    fast_stats = normalization._compute_stats
    normalization._compute_stats = lambda *a, **k: fast_stats(*a, **{**k, "use_fast_variance": False})

shape = model_info(args.model).input_shape
model = get_model(args.model, num_classes=10)
if args.optimizer == "adam":
    tx = optax.adam(args.lr or 1e-3, eps=args.eps)
else:
    tx = optax.sgd(args.lr or 0.1, momentum=0.9)
host = jax.device_get(create_train_state(model, shape, tx, seed=0))
dtype = np.float64 if args.x64 else np.float32
host = jax.tree.map(lambda x: x.astype(dtype) if x.dtype == np.float32 else x, host)
rng = np.random.default_rng(0)
# Real images: scikit-learn's digits in MNIST form, padded and tiled to the model's shape.
digits = load_digits()
pad = (shape[0] - 28) // 2
images = np.pad(digits_to_mnist_form(digits.images), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
images = np.repeat(images, shape[2], axis=-1)
order = rng.permutation(len(images))
batches = [{"image": (images[idx] / 255.0).astype(dtype),
            "label": digits.target[idx].astype(np.int32)}
           for idx in np.split(order[:args.steps * args.batch], args.steps)]
eval_images = images[order[-100:]]
eval_labels = digits.target[order[-100:]].astype(np.int32)
at = sorted({int(s) for s in args.at.split(",") if s} | {args.steps})


def snapshot(state):
    state = jax.device_get(state)
    return {"params": state.params, "batch_stats": state.batch_stats}


def flat(tree):
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.ravel(x) for x in leaves]) if leaves else np.zeros(1)


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# The reference: one device; with --ghost it computes BatchNorm statistics per group of
# batch/devices examples, which is what each device does with per-device statistics.
single = jax.device_put(host, jax.devices()[0])
step = jax.jit(lambda s, b: train_step(s, b, ghost_groups=args.devices if args.ghost else 0))
reference_at = {}
for i, batch in enumerate(batches, 1):
    single, _ = step(single, batch)
    if i in at:
        reference_at[i] = snapshot(single)
reference = reference_at[args.steps]
reference_eval = evaluate(single, eval_batches(eval_images, eval_labels, 32))

report = {"devices": len(jax.devices()), "model": args.model, "optimizer": args.optimizer,
          "eps": args.eps, "x64": args.x64, "ghost": args.ghost, "steps": args.steps}

class Perturbed(DataParallel):
    """One device, from parameters perturbed by float32 rounding: how far training itself
    amplifies an error of one rounding in its parameters."""

    def __init__(self):
        super().__init__("jit", devices=jax.devices()[:1])

    def put_state(self, state):
        noise = np.random.default_rng(1)
        params = jax.tree.map(lambda x: x * (1 + 2.0 ** -24 * noise.standard_normal(x.shape)
                                             ).astype(x.dtype), state.params)
        return super().put_state(state.replace(params=params))

    def train_step(self):
        return step

    def put_batch(self, batch):
        return batch


for mode in args.modes.split(","):
    parallel = Perturbed() if mode == "perturbed" else DataParallel(mode, ghost_bn=args.ghost)
    state = parallel.put_state(host)
    train = parallel.train_step()
    by_step = {}
    for i, batch in enumerate(batches, 1):
        state, _ = train(state, parallel.put_batch(batch))
        if i in at:
            ours_i, ref_i = snapshot(parallel.get_state(state)), reference_at[i]
            by_step[i] = {k: rel(flat(ours_i[k]), flat(ref_i[k])) for k in ours_i}
    tree = snapshot(parallel.get_state(state))
    named = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    diffs = jax.tree.leaves(jax.tree.map(rel, tree, reference))
    metrics = evaluate(state, eval_batches(eval_images, eval_labels, 32), parallel.eval_step(),
                       parallel.put_batch, parallel.to_host)
    report[mode] = {"max_rel_diff": max(diffs), "whole_rel_diff": rel(flat(tree), flat(reference)),
                    "by_step": by_step, "leaves": len(diffs),
                    "worst": sorted(zip(diffs, named))[-3:],
                    "eval": metrics, "reference_eval": reference_eval,
                    "sharded_over": len(jax.tree.leaves(state)[0].devices())}
print(json.dumps(report))
