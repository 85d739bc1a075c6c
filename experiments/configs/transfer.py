"""Experiment 8, transfer learning in the two modes the lectures describe (Yosinski, Clune,
Bengio and Lipson, "How transferable are features in deep neural networks?", NeurIPS 2014):
a network trained on MNIST (``pretrain``) is moved to Fashion-MNIST with only 1,000 labels.

Yosinski et al. find the first layers general and the last ones specific to their task, so
the convolutions are transferred and the dense layers (``fc1`` with its BatchNorm, and the
output layer) form the new classifier, re-initialised (``head="fc1,bn_fc1,head"``):

- ``feature_extraction``: the MNIST convolutions frozen, only the new classifier trained
  (``trainable="head"``);
- ``fine_tuning``: every layer trained, the transferred convolutions at a tenth of the new
  classifier's learning rate (``lr_groups="backbone=1e-4"``);
- ``fine_tuning_later``: the first convolution frozen, the later layers trained;

against ``scratch``, the same network trained on the 1,000 labels from a random start.
``lecture_cnn`` (experiments/nets.py): ReLU, 32 and 64 maps with BatchNorm, 128 dense units;
each dataset standardised with its own channel statistics; Adam, lr 1e-3, cosine decay.
The BatchNorm statistics of frozen layers keep adapting to Fashion-MNIST (see
jaxcnn.train.transfer).

    python -m experiments.run transfer
"""
from experiments.spec import Experiment, base_config

FEW = "train[:1000]"
NEW_CLASSIFIER = "fc1,bn_fc1,head"


def get_config():
    return base_config(model="lecture_cnn", dataset="mnist", optimizer="adam", lr=1e-3,
                       schedule="cosine", batch_size=64, epochs=2, preprocess="per_channel",
                       model_kwargs={"batch_norm": True})


def get_experiment():
    target = {"dataset": "fashion_mnist", "train_split": FEW, "epochs": 20, "batch_size": 32,
              "eval_split": "test[:2000]", "head": NEW_CLASSIFIER}
    pretrained = {**target, "init_from": "@pretrain"}
    return Experiment(
        title="Transfer learning: MNIST to Fashion-MNIST with 1,000 labels",
        claim="with few labels, starting from a pretrained network beats training from scratch",
        published="Yosinski et al. 2014 (ImageNet halves): transferred and fine-tuned features "
                  "beat random ones; no published MNIST -> Fashion-MNIST number",
        base=get_config(),
        arms={"pretrain": {},
              "scratch": dict(target),
              "feature_extraction": {**pretrained, "trainable": "head"},
              "fine_tuning": {**pretrained, "lr_groups": "backbone=1e-4"},
              "fine_tuning_later": {**pretrained, "freeze": "conv1,bn_conv1"}},
        quick={"epochs": 1},
        quick_arms={"pretrain": {"train_split": "train[:4096]"}},
        analysis="transfer", figure="accuracy",
        figure_arms=("scratch", "feature_extraction", "fine_tuning", "fine_tuning_later"),
        budget="pretraining on all 60,000 MNIST images for 2 epochs of batch 64; then the "
               "first 1,000 Fashion-MNIST training images, 20 epochs of batch 32 (620 steps)")
