"""Experiment 4, depth and degradation (He, Zhang, Ren and Sun, "Deep residual learning for
image recognition", CVPR 2016, figures 1 and 6): a 56-layer plain network has higher
*training* error than a 20-layer one (degradation, not overfitting), while a 56-layer ResNet
trains better than a 20-layer ResNet.

The CIFAR networks of the paper's section 4.2 (``plain20``, ``plain56``, ``resnet20``,
``resnet56``: 3x3 convolutions with BatchNorm, 16/32/64 maps, option-A shortcuts) on
Fashion-MNIST at its own 28x28 size (the networks take any size; padding to 32x32 would add
30% more work of zeros), a CPU budget: a training subset and a few epochs of SGD with momentum
0.9 and batch 128 as in the paper, but lr 0.02 with cosine decay: the paper's 0.1 throws the
56-layer networks off in their first steps, which its 64k iterations absorb (and for ResNet-110
it warms up at 0.01) but 45 steps do not.

    python -m experiments.run depth
"""
from experiments.spec import Experiment, base_config

SUBSET = "train[:2000]"


def get_config():
    return base_config(model="plain20", dataset="fashion_mnist", optimizer="sgd", lr=0.02,
                       momentum=0.9, schedule="cosine", batch_size=128, epochs=3,
                       train_split=SUBSET, eval_split="test[:1000]")


def get_experiment():
    return Experiment(
        title="Depth and degradation: plain and residual nets of 20 and 56 layers",
        claim="deeper plain nets train worse (higher training error); deeper residual nets "
              "train better",
        published="He et al. 2016, CIFAR-10 (fig. 6): plain-56 trains and tests worse than "
                  "plain-20; ResNet-56 6.97% test error vs ResNet-20 8.75%",
        base=get_config(),
        arms={"plain20": {}, "plain56": {"model": "plain56"}, "resnet20": {"model": "resnet20"},
              "resnet56": {"model": "resnet56"}},
        quick={"train_split": "train[:256]", "eval_split": "test[:256]", "epochs": 1,
               "eval_batch_size": 256},
        quick_arms={"plain20": {"model_kwargs": {"n": 1}}, "plain56": {"model_kwargs": {"n": 2}},
                    "resnet20": {"model_kwargs": {"n": 1}}, "resnet56": {"model_kwargs": {"n": 2}}},
        analysis="depth", figure="error",
        budget="Fashion-MNIST 28x28, the first 2,000 training images, 3 epochs of batch 128 "
               "(45 steps); curves on the first 1,000 test images; --quick trains 8- and "
               "14-layer versions")
