"""Experiment 5, initialisation (the lectures' homework): the same tanh network started from

- ``constant``: every weight 0 (and biases 0, as always): every unit of a layer computes the
  same thing and receives the same gradient, here zero, so nothing but the output bias
  learns; any constant keeps the units identical (the symmetry is never broken);
- ``large``: weights from N(0, 1): pre-activations of hundreds of inputs are far outside
  tanh's linear range, the units saturate and gradients vanish;
- ``glorot_uniform``: U(+-sqrt(6 / (fan_in + fan_out))), Glorot and Bengio, "Understanding
  the difficulty of training deep feedforward neural networks", AISTATS 2010;
- ``he_normal``: N(0, 2 / fan_in), He, Zhang, Ren and Sun, "Delving deep into rectifiers",
  ICCV 2015.

``lecture_cnn`` (experiments/nets.py) with tanh, 32 and 64 3x3 maps and a 128-unit dense
layer, SGD with momentum 0.9 (lr 0.01), MNIST.

    python -m experiments.run init
"""
from experiments.spec import Experiment, base_config


def get_config():
    return base_config(model="lecture_cnn", dataset="mnist", optimizer="sgd", lr=0.01,
                       momentum=0.9, schedule="constant", batch_size=64, epochs=4,
                       train_split="train[:8000]", eval_split="test[:2000]",
                       model_kwargs={"activation": "tanh", "kernel_init": "glorot_uniform"})


def get_experiment():
    inits = {"constant": "constant:0.0", "large": "normal:1.0",
             "glorot_uniform": "glorot_uniform", "he_normal": "he_normal"}
    return Experiment(
        title="Initialisation: constant, large, Glorot uniform, He normal",
        claim="constant weights do not learn, large weights saturate and learn slowly, "
              "Glorot and He initialisations learn",
        published="Glorot and Bengio 2010; He et al. 2015 (qualitative: the lectures' homework)",
        base=get_config(),
        arms={name: {"model_kwargs": {"kernel_init": spec}} for name, spec in inits.items()},
        quick={"train_split": "train[:1024]", "eval_split": "test[:1000]", "epochs": 1},
        analysis="init", figure="accuracy",
        budget="MNIST, the first 8,000 training images, 4 epochs of batch 64, SGD momentum "
               "0.9 lr 0.01")
