"""Experiment 7, augmentation on a small training subset: 1,000 MNIST images with and without
the data layer's random rotations (up to 10 degrees) and translations (up to 2 pixels), the
affine distortions of Simard, Steinkraus and Platt, "Best practices for convolutional neural
networks applied to visual document analysis", ICDAR 2003; the gap in test accuracy.

``lecture_cnn`` (experiments/nets.py) with ReLU, 32 and 64 maps, 128 dense units, Adam.

    python -m experiments.run augmentation
"""
from experiments.spec import Experiment, base_config


def get_config():
    return base_config(model="lecture_cnn", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="cosine", batch_size=32, epochs=25,
                       train_split="train[:1000]", eval_split="test[:2000]")


def get_experiment():
    return Experiment(
        title="Augmentation on 1,000 MNIST images",
        claim="augmenting a small training set raises test accuracy",
        published="Simard et al. 2003 (all 60,000 images): a CNN with affine distortions "
                  "0.6% test error, with elastic ones 0.4%",
        base=get_config(),
        arms={"none": {}, "rotate_translate": {"augment": "rotate:10,translate:2"}},
        quick={"train_split": "train[:256]", "eval_split": "test[:500]", "epochs": 1},
        analysis="augmentation", figure="accuracy",
        budget="MNIST, the first 1,000 training images, 25 epochs of batch 32")
