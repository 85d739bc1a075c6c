"""Experiment 3, Fashion-MNIST against the benchmark's table (Xiao, Rasul and Vollgraf,
"Fashion-MNIST: a novel image dataset for benchmarking machine learning algorithms", 2017;
github.com/zalandoresearch/fashion-mnist): "2 Conv <100K parameters" 92.5% and "ResNet18"
94.9% (the latter with normalisation, flips, translations and rotations).

``two_conv`` is ``lecture_cnn`` (experiments/nets.py) with 32 and 64 3x3 maps, BatchNorm,
dropout 0.25 and no hidden dense layer: 50,282 parameters. ``resnet20`` is the CIFAR ResNet
of He et al. 2016 (0.27M parameters) on the 28x28 images. Both use Adam with cosine decay;
the CPU time each took is reported.

    python -m experiments.run fashion_mnist
"""
from experiments.spec import Experiment, base_config

TWO_CONV = {"convs": (32, 64), "dense": (), "batch_norm": True, "dropout": 0.25}


def get_config():
    return base_config(model="lecture_cnn", dataset="fashion_mnist", optimizer="adam", lr=1e-3,
                       schedule="cosine", batch_size=64, epochs=10, model_kwargs=TWO_CONV)


def get_experiment():
    return Experiment(
        title="Fashion-MNIST: a 2-conv network under 100K parameters and a ResNet",
        claim="a small 2-conv network reaches about 92.5%, a residual network about 94.9%",
        published="Fashion-MNIST benchmark: 2 Conv <100K params 92.5%; ResNet18 94.9%",
        base=get_config(),
        arms={"two_conv": {}, "resnet20": {"model": "resnet20", "model_kwargs": None,
                                           "batch_size": 128, "epochs": 3}},
        quick={"train_split": "train[:1024]", "eval_split": "test[:1000]", "epochs": 1},
        quick_arms={"resnet20": {"model_kwargs": {"n": 1}}},
        analysis="fashion_mnist", figure="",
        budget="all 60,000 training images; two_conv 10 epochs of batch 64, resnet20 3 "
               "epochs of batch 128; Adam with cosine decay, no augmentation")
