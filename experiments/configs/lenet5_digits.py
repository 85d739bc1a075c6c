"""LeNet-5 on the offline digits with classic constant-rate Adam (lr 1e-3), batch 64.

    jaxcnn train --config experiments/configs/lenet5_digits.py --config.epochs=5
"""
from jaxcnn.configs import default


def get_config():
    config = default.get_config()
    config.model = "lenet5"
    config.schedule = "constant"
    config.epochs = 20
    config.batch_size = 64
    return config
