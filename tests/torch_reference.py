"""Writes a torchvision model's random weights, an input and its eval-mode output to .npz.

Run by the test suite under a Python that has torch and torchvision (``.venv-torch``, or the
interpreter named by ``JAXCNN_TORCH_PYTHON``), so jaxcnn's conversion is checked against
torchvision itself even where jaxcnn's own Python has no PyTorch build.

    python tests/torch_reference.py NAME OUT.npz --input-shape 1,3,224,224 --kwargs '{}'
"""
import argparse
import json

import numpy as np
import torch

# torchvision's PyPI wheel links its compiled ops against CUDA libraries that a CPU build of
# torch lacks; it then cannot load them and fails at import while registering fake kernels
# for nms/qnms. The classification models need none of those ops, so declare the two schemas
# here and let the import go through.
if not hasattr(torch.ops.torchvision, "nms"):
    _SCHEMAS = torch.library.Library("torchvision", "DEF")
    for _op in ("nms", "qnms"):
        _SCHEMAS.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import torchvision  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("out")
    parser.add_argument("--input-shape", required=True, help="N,C,H,W")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the builder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.name, weights=None, **json.loads(args.kwargs))
    # Random, non-trivial BatchNorm statistics, so the conversion of running stats is tested.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
    model.eval()
    shape = tuple(int(s) for s in args.input_shape.split(","))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        y = model(x)
    arrays = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
    np.savez(args.out, x=x.numpy(), y=y.numpy(), **arrays)


if __name__ == "__main__":
    main()
