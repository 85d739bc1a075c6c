"""Cold and warm (persistent-cache) compile times of a model's train step, each in a fresh process.

The ``jaxcnn`` command turns JAX's persistent compilation cache on by default
(``jaxcnn/train/compile_cache.py``); this measures what it saves. Each probe is a new
Python process that imports jaxcnn, initialises the model (jitted ``model.init``), then
traces, lowers and compiles ``jax.jit(train_step, donate_argnums=0)`` for one batch and runs
it once. The first probe starts from an empty cache directory, the second from the one the
first filled.

    python benchmarks/compile_time.py [--model resnet50] [--batch 128] [--repeats 1]

Input: ResNet-50 at 64x64x3 on CPU (224x224x3 when JAX's default backend is a GPU), the
zoo's default input otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def input_shape(name: str, gpu: bool) -> tuple[int, ...]:
    from jaxcnn.models import model_info

    if name == "resnet50" and not gpu:
        return (64, 64, 3)
    return tuple(model_info(name).input_shape)


def probe(name: str, batch: int, cache_dir: str) -> None:
    """(subprocess) Times one cold-or-warm compile of ``name``'s train step; prints JSON."""
    began = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import optax

    from jaxcnn.models import get_model
    from jaxcnn.train import create_train_state, train_step
    from jaxcnn.train.compile_cache import enable_compilation_cache

    enable_compilation_cache(cache_dir)
    shape = input_shape(name, jax.default_backend() == "gpu")
    imported = time.perf_counter()
    state = create_train_state(get_model(name), shape, optax.adam(1e-3), seed=0)
    jax.block_until_ready(state)
    initialised = time.perf_counter()
    batch_ = {"image": jnp.zeros((batch, *shape), jnp.float32),
              "label": jnp.zeros((batch,), jnp.int32)}
    lowered = jax.jit(train_step, donate_argnums=0).lower(state, batch_)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    compiled(state, batch_)[1]["count"].block_until_ready()
    print(json.dumps({"shape": shape, "import": imported - began,
                      "init": initialised - imported, "trace_lower": traced - initialised,
                      "compile": done - traced, "first_step": time.perf_counter() - done}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="cold/warm pairs")
    parser.add_argument("--probe-cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_cache:
        probe(args.model, args.batch, args.probe_cache)
        return
    print(f"Compile time of the {args.model} train step (batch {args.batch}), each in a fresh "
          "process; load average %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="jaxcnn-cache-") as cache:
            for label in ("cold (empty persistent cache)", "warm (persistent cache filled)"):
                out = subprocess.run([sys.executable, __file__, "--model", args.model,
                                      "--batch", str(args.batch), "--probe-cache", cache],
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"  {label}: failed\n{out.stderr[-2000:]}")
                    return
                t = json.loads(out.stdout.strip().splitlines()[-1])
                shape = "x".join(map(str, t["shape"]))
                print(f"  {label:31s} input {shape}: init (jitted model.init) {t['init']:6.2f} s,"
                      f" trace+lower {t['trace_lower']:5.2f} s, compile {t['compile']:6.2f} s, "
                      f"first step {t['first_step']:5.2f} s", flush=True)


if __name__ == "__main__":
    main()
