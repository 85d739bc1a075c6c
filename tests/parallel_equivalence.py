"""Trains 20 steps on one device and data parallel over N simulated CPU devices (jit and pmap),
printing the largest relative differences of parameters, batch statistics and eval metrics as
JSON. Run by tests/test_parallel.py in a fresh process (the device count is fixed at start):

    python tests/parallel_equivalence.py --devices 8 --model resnet20
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
parser.add_argument("--optimizer", default="adam", help="adam (lr 1e-3) or sgd (lr 0.1, momentum 0.9)")
args = parser.parse_args()
jax.config.update("jax_num_cpu_devices", args.devices)
jax.config.update("jax_enable_x64", args.x64)

import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxcnn.models import get_model, model_info  # noqa: E402
from jaxcnn.train import create_train_state, train_step  # noqa: E402
from jaxcnn.data import eval_batches  # noqa: E402
from jaxcnn.train.loop import evaluate  # noqa: E402
from jaxcnn.train.parallel import DataParallel  # noqa: E402

shape = model_info(args.model).input_shape
model = get_model(args.model, num_classes=10)
tx = optax.adam(1e-3) if args.optimizer == "adam" else optax.sgd(0.1, momentum=0.9)
host = jax.device_get(create_train_state(model, shape, tx, seed=0))
dtype = np.float64 if args.x64 else np.float32
host = jax.tree.map(lambda x: x.astype(dtype) if x.dtype == np.float32 else x, host)
rng = np.random.default_rng(0)
# Real images: scikit-learn's digits in MNIST form, padded and tiled to the model's shape.
from sklearn.datasets import load_digits  # noqa: E402

from jaxcnn.data.digits import digits_to_mnist_form  # noqa: E402

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

single = jax.device_put(host, jax.devices()[0])
step = jax.jit(train_step)
for batch in batches:
    single, _ = step(single, batch)
reference = jax.device_get({"params": single.params, "batch_stats": single.batch_stats})
reference_eval = evaluate(single, eval_batches(eval_images, eval_labels, 32))


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


report = {"devices": len(jax.devices()), "model": args.model, "optimizer": args.optimizer}
for mode in ("jit", "pmap"):
    parallel = DataParallel(mode)
    state = parallel.put_state(host)
    train = parallel.train_step()
    for batch in batches:
        state, _ = train(state, parallel.put_batch(batch))
    ours = jax.device_get(parallel.get_state(state))
    tree = {"params": ours.params, "batch_stats": ours.batch_stats}
    diffs = jax.tree.leaves(jax.tree.map(rel, tree, reference))
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    whole = rel(flat(tree), flat(reference))
    metrics = evaluate(state, eval_batches(eval_images, eval_labels, 32), parallel.eval_step(),
                       parallel.put_batch, parallel.to_host)
    worst = sorted(zip(diffs, [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]))[-3:]
    report[mode] = {"max_rel_diff": max(diffs), "whole_rel_diff": whole, "leaves": len(diffs), "worst": worst,
                    "eval": metrics, "reference_eval": reference_eval,
                    "sharded_over": len(jax.tree.leaves(state)[0].devices())}
print(json.dumps(report))
