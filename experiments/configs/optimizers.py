"""Experiment 9, optimisers on the MNIST case study, as the lectures compare them: Adam
(Kingma and Ba 2015, lr 1e-3), SGD with momentum 0.9 (lr 0.01) and Adadelta (Zeiler 2012,
lr 1.0, rho 0.95, the Keras default the lectures used), each with a constant rate, on
``mnist_cnn``.

    python -m experiments.run optimizers
"""
from experiments.spec import Experiment, base_config


def get_config():
    return base_config(model="mnist_cnn", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="constant", batch_size=128, epochs=3,
                       train_split="train[:10000]", eval_split="test[:2000]")


def get_experiment():
    return Experiment(
        title="Optimisers on the MNIST case study: Adam, SGD with momentum, Adadelta",
        claim="Adam converges fastest; SGD with momentum and Adadelta get there more slowly",
        published="lecture comparison (qualitative); Kingma and Ba 2015, fig. 3",
        base=get_config(),
        arms={"adam": {}, "sgd_momentum": {"optimizer": "sgd", "lr": 0.01},
              "adadelta": {"optimizer": "adadelta", "lr": 1.0}},
        quick={"train_split": "train[:1024]", "eval_split": "test[:1000]", "epochs": 1},
        analysis="optimizers", figure="accuracy",
        budget="MNIST, the first 10,000 training images, 3 epochs of batch 128")
