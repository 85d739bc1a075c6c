"""Experiment 1, the lectures' MNIST case study: ``mnist_cnn`` (conv 20@5x5, conv 40@5x5,
dense 100, softmax; no pooling, 1.6M parameters) trained with Adam (Kingma and Ba 2015: lr
1e-3) reaches at least 99.0% test accuracy (the lecture trains 20 epochs at a constant
rate). Here the rate decays along a cosine over 4 epochs; the summary reports the first epoch
that reaches 99.0% and the time taken to it.

    python -m experiments.run mnist_case_study
"""
from experiments.spec import Experiment, base_config

TARGET = 0.99


def get_config():
    return base_config(model="mnist_cnn", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="cosine", batch_size=128, epochs=4)


def get_experiment():
    return Experiment(
        title="MNIST case study: the lectures' 4-layer CNN with Adam",
        claim="mnist_cnn trained with Adam reaches at least 99.0% MNIST test accuracy",
        published="lecture: >= 99.0% test accuracy after 20 epochs of Adam",
        base=get_config(), arms={"mnist_cnn": {}},
        quick={"train_split": "train[:1024]", "eval_split": "test[:1000]", "epochs": 1},
        target=TARGET, analysis="mnist_case_study", figure="accuracy",
        budget="all 60,000 training images, 4 epochs of batch 128 (Adam, lr 1e-3 decayed "
               "along a cosine), the 10,000 test images after every epoch")
