"""Experiment 6, dropout and BatchNorm on a small training set (the lectures' homework):
4,000 MNIST images, the same network without either, with dropout (Srivastava et al.,
"Dropout: a simple way to prevent neural networks from overfitting", JMLR 2014; rate 0.5
before each dense layer), with BatchNorm (Ioffe and Szegedy, "Batch normalization", ICML 2015;
after every convolution and hidden dense layer), and with both.

``lecture_cnn`` (experiments/nets.py): ReLU, 32 and 64 3x3 maps, a 128-unit dense layer; Adam
lr 1e-3, constant.

    python -m experiments.run regularization
"""
from experiments.spec import Experiment, base_config


def get_config():
    return base_config(model="lecture_cnn", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="constant", batch_size=64, epochs=12,
                       train_split="train[:4000]", eval_split="test[:2000]")


def get_experiment():
    return Experiment(
        title="Dropout and BatchNorm on 4,000 MNIST images",
        claim="on a small training set dropout narrows the gap between training and test "
              "accuracy; BatchNorm speeds up training",
        published="Srivastava et al. 2014 and Ioffe and Szegedy 2015 (qualitative: the "
                  "lectures' homework)",
        base=get_config(),
        arms={"plain": {}, "dropout": {"model_kwargs": {"dropout": 0.5}},
              "batchnorm": {"model_kwargs": {"batch_norm": True}},
              "batchnorm_dropout": {"model_kwargs": {"batch_norm": True, "dropout": 0.5}}},
        quick={"train_split": "train[:512]", "eval_split": "test[:1000]", "epochs": 1},
        analysis="regularization", figure="accuracy",
        budget="MNIST, the first 4,000 training images, 12 epochs of batch 64")
