"""ResNet-50 (He et al. 2016) training throughput on a GPU in bfloat16: jaxcnn against PyTorch.

Issue 7's accelerator check. On the GPU that JAX and PyTorch see, in one process:

- the bf16 matmul rate (a jitted 8192^3 ``jnp.matmul``, best of 10), the ceiling;
- jaxcnn's real train step (``jaxcnn.train.train_step`` with ``dtype=bfloat16``: bf16
  compute, float32 parameters and Adam state, the non-finite guard on) on 224x224x3 images;
- torchvision's ``resnet50`` in channels_last under ``torch.autocast(bfloat16)`` with
  ``torch.optim.Adam`` (fused), eager, for comparison (skipped where torch is absent);

each timed over ``--seconds`` after warm-up, alternating, ``--reps`` times; medians printed
with the achieved share of the matmul rate (6 x forward MACs x images/s). NVIDIA's published
PyTorch ResNet-50 mixed-precision training figure is about 2,500 images/s on one A100.

    XLA_PYTHON_CLIENT_MEM_FRACTION=.45 python benchmarks/gpu_throughput.py [--batch 256]
"""
from __future__ import annotations

import argparse
import statistics
import time

from throughput import JaxRunner, matmul_rate

SHAPE = (224, 224, 3)


def torch_runner(batch: int):
    import torch
    import torchvision

    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x = torch.rand(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def run(steps: int) -> float:
        torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - began

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    import jax

    from jaxcnn.models.summary import summarize

    print(f"JAX {jax.__version__}, devices {jax.devices()}", flush=True)
    peak = matmul_rate(8192, 10, "bfloat16")
    print(f"bf16 matmul rate (jitted 8192^3 jnp.matmul, best of 10): {peak / 1e12:.0f} TFLOP/s")
    macs = summarize("resnet50", SHAPE).macs
    began = time.perf_counter()
    jaxcnn = JaxRunner("resnet50", SHAPE, args.batch, "stop", dtype=jax.numpy.bfloat16)
    print(f"jaxcnn resnet50 bf16, batch {args.batch}: first step (compile) "
          f"{jaxcnn.compile_seconds:.1f} s, {time.perf_counter() - began:.1f} s with setup")
    runners = {"jaxcnn": jaxcnn.run}
    try:
        import torch
        runners["PyTorch"] = torch_runner(args.batch)
        print(f"PyTorch {torch.__version__}, torchvision resnet50, channels_last, autocast bf16")
    except ImportError as err:
        print(f"PyTorch unavailable ({err}); jaxcnn only")
    steps = {}
    for name, run in runners.items():
        run(3)
        steps[name] = max(1, round(args.seconds / (run(3) / 3)))
    rates = {name: [] for name in runners}
    for rep in range(args.reps):
        for name in (list(runners) if rep % 2 == 0 else list(runners)[::-1]):
            rates[name].append(steps[name] * args.batch / runners[name](steps[name]))
        print(f"  rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
              flush=True)
    print(f"\nresnet50 224x224x3, bf16, batch {args.batch}, {6 * macs / 1e9:.1f} GFLOP per image "
          "(6 x forward MACs); images/s median (min-max), share of the bf16 matmul rate:")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:8s} {median:8,.0f} ({min(values):,.0f}-{max(values):,.0f})  "
              f"{6 * macs * median / peak:.1%}")
    if len(rates) == 2:
        ratio = statistics.median(rates["jaxcnn"]) / statistics.median(rates["PyTorch"])
        print(f"  jaxcnn/PyTorch {ratio:.2f}; NVIDIA's published PyTorch mixed-precision figure: "
              "about 2,500 images/s on one A100")


if __name__ == "__main__":
    main()
