"""The PyTorch side of the jaxcnn benchmarks, run under a Python that has torch.

PyTorch has no CPU build for Python 3.12 on these machines, and JAX >= 0.12 needs 3.12, so
the two frameworks cannot share a process: the jaxcnn benchmarks start this file under the
torch interpreter (``.venv-torch/bin/python``, or ``--torch-python`` /
``$JAXCNN_TORCH_PYTHON``) and talk to it. It imports nothing from jaxcnn.

Two modes:

``python _torch_side.py serve``
    A persistent worker for ``throughput.py``: one JSON request a line on stdin, one JSON
    reply a line on stdout (all logging goes to stderr). Requests::

        {"cmd": "setup", "model": "lenet5", "shape": [28, 28, 1], "batch": 128,
         "threads": 2, "num_classes": 10, "device": "cpu"}      -> {"params": N, ...}
        {"cmd": "run", "steps": 20}                             -> {"seconds": s}
        {"cmd": "quit"}

    ``run`` times ``steps`` training steps (forward, cross-entropy, backward, Adam) on one
    fixed random batch, after ``setup`` has already run warm-up steps.

``python _torch_side.py tta --model lenet5 --seed 0 ...``
    A plain PyTorch training script for ``time_to_accuracy.py``: loads the MNIST IDX files,
    trains with the given recipe, evaluates on all 10,000 test images every
    ``--evals-per-epoch``-th of an epoch, and prints one JSON line per evaluation, then
    exits as soon as the test accuracy reaches ``--target``.

The models are the jaxcnn ones layer for layer (same widths, kernels, paddings, strides,
shortcuts and, for the small MNIST models, the same Glorot-uniform kernels and zero biases),
in channels_last memory format, trained eagerly with ``torch.optim.Adam``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
from _common import load_mnist, serve  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# --- the models ----------------------------------------------------------------------------


def _glorot(module: nn.Module) -> nn.Module:
    """Glorot-uniform kernels and zero biases: the Keras/Flax init jaxcnn's small models use."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def mnist_cnn(h: int, w: int, c: int, num_classes: int) -> nn.Module:
    """conv 20@5x5, conv 40@5x5 (no padding, no pooling), dense 100, dense ``num_classes``."""
    return _glorot(nn.Sequential(
        nn.Conv2d(c, 20, 5), nn.ReLU(), nn.Conv2d(20, 40, 5), nn.ReLU(), nn.Flatten(),
        nn.Linear(40 * (h - 8) * (w - 8), 100), nn.ReLU(), nn.Linear(100, num_classes)))


def lenet5(h: int, w: int, c: int, num_classes: int) -> nn.Module:
    """Modern LeNet-5: C1 6@5x5 (padded by 2 on 28x28), max-pool, C3 16@5x5, max-pool, 120, 84."""
    pad = max(0, (32 - min(h, w)) // 2)
    side_h, side_w = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
    return _glorot(nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * side_h * side_w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes)))


class BasicBlockA(nn.Module):
    """CIFAR ResNet basic block with the paper's option-A (zero-padding) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x
        if self.stride != 1 or self.extra:
            s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    """He et al. 2016 section 4.2: conv 16, three stages of ``n`` basic blocks, dense."""

    def __init__(self, n: int, c: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlockA(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3), projection shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """torchvision ``resnet50`` (v1.5): 7x7/2 conv, 3x3/2 max-pool, stages (3, 4, 6, 3)."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(c, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, (width, size) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            for i in range(size):
                blocks.append(Bottleneck(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name: str, shape, num_classes: int) -> nn.Module:
    h, w, c = shape
    if name == "mnist_cnn":
        return mnist_cnn(h, w, c, num_classes)
    if name == "lenet5":
        return lenet5(h, w, c, num_classes)
    if name == "resnet20":
        return CifarResNet(3, c, num_classes)
    if name == "resnet50":
        return ResNet50(c, num_classes)
    raise SystemExit(f"_torch_side.py: no PyTorch twin for model {name!r}; "
                     "known: mnist_cnn, lenet5, resnet20, resnet50")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- serve: the throughput worker ----------------------------------------------------------


class Trainer:
    def __init__(self, req: dict):
        torch.set_num_threads(int(req["threads"]))
        torch.manual_seed(0)
        self.device = torch.device(req.get("device", "cpu"))
        shape, batch = req["shape"], int(req["batch"])
        fmt = torch.channels_last
        self.model = build(req["model"], shape, int(req["num_classes"])).to(
            self.device, memory_format=fmt).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        h, w, c = shape
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(batch, c, h, w, generator=g).to(self.device, memory_format=fmt)
        self.y = torch.randint(0, int(req["num_classes"]), (batch,), generator=g).to(self.device)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, steps: int) -> float:
        self.sync()
        began = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.sync()
        return time.perf_counter() - began


def setup_trainer(req: dict):
    trainer = Trainer(req)
    began = time.perf_counter()
    warmup = trainer.run(int(req.get("warmup", 3)))
    return trainer, {"params": count_params(trainer.model), "warmup_seconds": warmup,
                     "setup_seconds": time.perf_counter() - began,
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "python": sys.version.split()[0],
                     "mkldnn": bool(torch.backends.mkldnn.is_available())}


# --- tta: the plain PyTorch training script ------------------------------------------------


def lr_at(step: int, total: int, peak: float, schedule: str, warmup_frac: float) -> float:
    """The same schedules as time_to_accuracy.py's jax side (optax's formulas)."""
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    # onecycle: optax.cosine_onecycle_schedule(total, peak, pct_start=warmup_frac,
    #                                          div_factor=25, final_div_factor=1e4)
    init, final = peak / 25.0, peak / 25.0 / 1e4
    up = int(warmup_frac * total)
    if step < up:
        return init + (peak - init) * 0.5 * (1 - math.cos(math.pi * step / up))
    frac = min(1.0, (step - up) / max(1, total - up))
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * frac))


def tta(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = load_mnist(args.data_dir)
    mean, std = 0.1307, 0.3081
    fmt = torch.channels_last
    # uint8 in memory, each batch normalised as it is taken (as the jaxcnn side does)
    xtr, xte = torch.from_numpy(xtr.copy()), torch.from_numpy(xte.copy())
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))

    def prepare(images):
        x = (images.float() * (1 / 255.0) - mean) / std
        return x.unsqueeze(1).contiguous(memory_format=fmt)

    model = build(args.model, (28, 28, 1), 10).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    # the moving average of the parameters that is evaluated (jaxcnn.train.ema_update's
    # recurrence, as torch.optim.swa_utils.get_ema_multi_avg_fn computes it), or the model
    evaluated = copy.deepcopy(model) if args.average else model
    averages, params = list(evaluated.parameters()), list(model.parameters())
    n, bs = len(xtr), args.batch
    steps_per_epoch = n // bs  # drop the last partial batch, as the jaxcnn side does
    total = round(steps_per_epoch * args.epochs)
    every = steps_per_epoch / args.evals_per_epoch
    evals = {min(total, round(every * k)) for k in range(1, math.ceil(total / every) + 1)}
    emit = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
    emit(event="ready", t=time.perf_counter() - START)
    model.train()
    for step in range(total):
        epoch, i = divmod(step, steps_per_epoch)
        if i == 0:
            perm = torch.randperm(n)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.schedule, args.warmup)
        idx = perm[i * bs:(i + 1) * bs]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(prepare(xtr[idx])), ytr[idx]).backward()
        opt.step()
        if args.average:
            with torch.no_grad():
                torch._foreach_lerp_(averages, params, 1.0 - args.average)
        if step + 1 in evals:
            if args.average:  # running statistics, where the model has any, as they stand
                for kept, current in zip(evaluated.buffers(), model.buffers()):
                    kept.copy_(current)
            evaluated.eval()  # the model itself where there is no average
            with torch.no_grad():
                correct = sum(int((evaluated(prepare(xte[j:j + 2000])).argmax(1)
                                   == yte[j:j + 2000]).sum()) for j in range(0, len(xte), 2000))
            evaluated.train()
            acc, where = correct / len(xte), (step + 1) / steps_per_epoch
            emit(event="eval", epoch=where, accuracy=acc, t=time.perf_counter() - START)
            if acc >= args.target:
                emit(event="reached", epoch=where, accuracy=acc, t=time.perf_counter() - START)
                return
    emit(event="not_reached", t=time.perf_counter() - START)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve")
    t = sub.add_parser("tta")
    t.add_argument("--model", default="lenet5")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=24)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine", "constant"))
    t.add_argument("--warmup", type=float, default=0.2)
    t.add_argument("--epochs", type=float, default=3)
    t.add_argument("--average", type=float, default=0.998,
                   help="decay of the evaluated moving average of the parameters; 0: none")
    t.add_argument("--evals-per-epoch", type=int, default=4)
    t.add_argument("--target", type=float, default=0.99)
    t.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    t.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    if args.mode == "tta" and not 0.0 <= args.average < 1.0:
        parser.error(f"--average {args.average}: the decay must be in [0, 1)")
    if args.mode == "serve":
        serve(setup_trainer)
    else:
        tta(args)


if __name__ == "__main__":
    main()
