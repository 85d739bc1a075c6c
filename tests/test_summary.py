"""Model summaries: parameter counts, per-layer rows and multiply-accumulates, no compile."""
from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxcnn.errors import InputShapeError, JaxCNNError
from jaxcnn.models import list_models
from jaxcnn.models.summary import format_summary, summarize

# torchvision's published per-image figures (its "GFLOPS" column counts multiply-adds).
TORCHVISION_GMACS = {"alexnet": 0.71, "vgg16": 15.47, "googlenet": 1.50, "resnet50": 4.09,
                     "mobilenet_v2": 0.30, "densenet121": 2.83}


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_match_torchvision(name):
    if name not in list_models():  # googlenet / resnet50 live in another family's file
        pytest.skip(f"{name} is not registered")
    summary = summarize(name)
    assert summary.input_shape == (224, 224, 3)
    assert summary.macs == pytest.approx(TORCHVISION_GMACS[name] * 1e9, rel=0.02)


def test_lenet5_by_hand():
    # LeNet-5 on 28x28 (C1 pads by 2): MACs = output elements x kernel area x in-channels.
    conv1 = 28 * 28 * 6 * (5 * 5 * 1)  # 117,600
    conv2 = 10 * 10 * 16 * (5 * 5 * 6)  # 240,000
    fc1 = 16 * 5 * 5 * 120  # 48,000
    fc2 = 120 * 84  # 10,080
    head = 84 * 10  # 840
    assert conv1 + conv2 + fc1 + fc2 + head == 416_520
    summary = summarize("lenet5")
    assert summary.macs == 416_520
    assert summary.trainable_params == 61_706 and summary.non_trainable_params == 0
    rows = {row.path: row for row in summary.rows}
    # conv1 is conv, ReLU and 2x2 pool in one layer (jaxcnn.models.conv_pool): 28x28 pooled
    assert (rows["conv1"].module, rows["conv1"].output_shape) == ("ConvReluMaxPool", (1, 14, 14, 6))
    assert (rows["conv1"].params, rows["conv1"].macs) == (156, conv1)
    assert (rows["conv2"].params, rows["conv2"].macs) == (2_416, conv2)
    assert (rows["head"].output_shape, rows["head"].macs) == ((1, 10), head)
    assert rows[""].macs == summary.macs  # the whole-model row
    assert summary.output_shape == (1, 10)


def test_alexnet_per_layer():
    rows = {row.path: row for row in summarize("alexnet").rows}
    assert rows["conv1"].output_shape == (1, 55, 55, 64)
    assert rows["conv1"].macs == 55 * 55 * 64 * 11 * 11 * 3
    assert rows["fc1"].macs == 256 * 6 * 6 * 4096


def test_trainable_and_non_trainable():
    summary = summarize("vgg11_bn", input_shape=(32, 32, 3), num_classes=10)
    bn_channels = 64 + 128 + 256 * 2 + 512 * 4
    assert summary.non_trainable_params == 2 * bn_channels  # running means and variances
    assert summary.trainable_params == 132_868_840 - 4096 * 990 - 990
    assert summary.total_params == summary.trainable_params + summary.non_trainable_params
    assert summary.output_shape == (1, 10)


def test_format_summary():
    text = format_summary(summarize("lenet5"))
    # conv, ReLU and pool are one layer (jaxcnn.models.conv_pool), listed once
    line = [row for row in text.splitlines() if row.startswith("conv1 (")]
    assert len(line) == 1 and line[0].split() == ["conv1", "(ConvReluMaxPool)", "(1,", "14,",
                                                  "14,", "6)", "156", "117,600"]
    assert "Total params: 61,706" in text
    assert "Trainable params: 61,706" in text and "Non-trainable params: 0" in text
    assert "416,520" in text
    nested = summarize("mobilenet_v2")
    assert "  expand (ConvBN)" in format_summary(nested)
    assert "expand" not in format_summary(nested, max_depth=1)
    assert str(nested) == format_summary(nested)


def test_nothing_is_compiled(caplog):
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        summarize("mobilenet_v2")
    assert not [r for r in caplog.records if "ompil" in r.getMessage()]


class _Nested(nn.Module):
    """A dense layer, a jitted matmul and a 3-step scan of matmuls: 4*5 + 5*6 + 3*(6*6)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(5, name="dense")(x.reshape((x.shape[0], -1)))
        w = self.param("w", nn.initializers.ones, (5, 6))
        x = jax.jit(jnp.dot)(x, w)
        v = self.param("v", nn.initializers.ones, (6, 6))
        x, _ = jax.lax.scan(lambda c, _: (c @ v, None), x, None, length=3)
        return x


def test_nested_jaxprs_are_counted():
    summary = summarize(_Nested(), input_shape=(2, 2, 1))
    assert summary.macs == 4 * 5 + 5 * 6 + 3 * 6 * 6
    rows = {row.path: row for row in summary.rows}
    assert rows["dense"].macs == 20 and rows["dense"].params == 25


def test_errors():
    with pytest.raises(JaxCNNError, match="input_shape"):
        summarize(_Nested())
    with pytest.raises(InputShapeError, match="vgg16 needs images of at least 32x32"):
        summarize("vgg16", input_shape=(16, 16, 3))
