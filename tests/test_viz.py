"""jaxcnn.viz: exact numbers (confusion counts, saliency gradients, layer shapes), figure
contents (tile counts, titles), and every figure of a real 2-epoch run."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxcnn import viz  # noqa: E402
from jaxcnn.errors import JaxCNNError, RunDirError, UnknownNameError  # noqa: E402
from jaxcnn.models import get_model  # noqa: E402
from jaxcnn.viz.filters import guess_first_layer  # noqa: E402


@pytest.fixture(scope="module")
def lenet():
    model = get_model("lenet5", num_classes=10)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    return model, variables, image


class Linear(nn.Module):
    """logits = flatten(x) @ W + b: the gradient of logit c is W[:, c], everywhere."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes, name="dense")(x.reshape((x.shape[0], -1)))


# --- exact numbers ---------------------------------------------------------------------------

def test_confusion_matrix_counts_a_hand_computed_example():
    labels = [0, 0, 1, 2, 2, 2, 1]
    predictions = [0, 1, 1, 2, 0, 2, 1]
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [1, 0, 2]])
    matrix = viz.confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_allclose(viz.per_class_accuracy(matrix), [0.5, 1.0, 2 / 3])
    with pytest.raises(JaxCNNError, match="0..2"):
        viz.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(JaxCNNError, match="differ in length"):
        viz.confusion_matrix([0, 1], [0], 3)


def test_saliency_of_a_linear_model_is_the_absolute_weight_column():
    model = Linear(num_classes=3)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 6, 2))
    variables = model.init(jax.random.PRNGKey(0), images)
    w = np.asarray(variables["params"]["dense"]["kernel"])  # (5*6*2, 3)

    def expected(c):  # |dS_c/dI| is |W[:, c]| reshaped to the image, then max over channels
        return np.abs(w[:, c]).reshape(5, 6, 2).max(axis=-1)

    maps = viz.saliency(model, variables, images, class_index=2)
    assert maps.shape == (4, 5, 6)
    for m in maps:
        np.testing.assert_allclose(m, expected(2), rtol=1e-6)
    per_image = viz.saliency(model, variables, images, class_index=jnp.array([0, 1, 2, 0]))
    for m, c in zip(per_image, [0, 1, 2, 0]):
        np.testing.assert_allclose(m, expected(c), rtol=1e-6)
    predicted = np.asarray(model.apply(variables, images)).argmax(-1)
    jitted = jax.jit(functools.partial(viz.saliency, model))(variables, images)
    for m, c in zip(jitted, predicted):
        np.testing.assert_allclose(m, expected(c), rtol=1e-6)


def test_lenet5_layers_and_activation_shapes(lenet):
    model, variables, image = lenet
    layers = viz.list_layers(model, variables, (28, 28, 1))
    assert [(l.name, l.shape, l.is_conv) for l in layers] == [
        ("conv1", (28, 28, 6), True), ("conv2", (10, 10, 16), True), ("fc1", (120,), False),
        ("fc2", (84,), False), ("head", (10,), False)]
    maps = viz.activation_maps(model, variables, image)
    assert {k: v.shape for k, v in maps.items()} == {"conv1": (28, 28, 6), "conv2": (10, 10, 16)}
    # conv1's maps are its convolution's output (before the ReLU and pool of its layer)
    params = variables["params"]["conv1"]
    conv = jax.lax.conv_general_dilated(
        jnp.asarray(image[None] / np.float32(255)), params["kernel"], (1, 1), ((2, 2), (2, 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
    np.testing.assert_allclose(maps["conv1"], conv[0], rtol=1e-5, atol=1e-5)
    dense = viz.activation_maps(model, variables, image, layers=["fc1", "head"])
    assert dense["fc1"].shape == (120,)
    logits = model.apply(variables, image[None] / np.float32(255))
    np.testing.assert_allclose(dense["head"], logits[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(UnknownNameError, match="conv3.*conv1"):
        viz.activation_maps(model, variables, image, layers="conv3")


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.relu(x + y)


class Nested(nn.Module):
    """A residual block with batch norm inside a small network, as in the ResNets."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(name="block1")(nn.Conv(4, (3, 3), strides=2, name="stem")(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_activations_of_nested_layers_with_batch_norm():
    model = Nested()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)))
    assert "batch_stats" in variables
    names = [layer.name for layer in viz.list_layers(model, variables, (12, 12, 3))]
    assert names == ["stem", "block1/conv", "block1/bn", "block1", "head"]
    assert viz.first_conv_layer(model, variables, (12, 12, 3)) == "stem"
    maps = viz.activation_maps(model, variables, np.ones((12, 12, 3), np.float32),
                               layers=["block1/conv", "block1"])
    assert maps["block1/conv"].shape == (6, 6, 4) and maps["block1"].shape == (6, 6, 4)
    assert (maps["block1"] >= 0).all()  # the block's output is after its ReLU
    assert list(viz.activation_maps(model, variables, np.ones((12, 12, 3)))) == ["stem",
                                                                               "block1/conv"]


def test_first_layer_guess_does_not_trust_alphabetical_order():
    kernels = {name: np.zeros(shape) for name, shape in [
        ("last/conv", (1, 1, 320, 1280)), ("block1/depthwise/conv", (3, 3, 1, 32)),
        ("block1/project/conv", (1, 1, 32, 320)), ("stem/conv", (3, 3, 3, 32))]}
    assert guess_first_layer(viz.conv_kernels({"params": _nest(kernels)})) == "stem/conv"


def _nest(flat):
    tree = {}
    for name, kernel in flat.items():
        node = tree
        for part in name.split("/"):
            node = node.setdefault(part, {})
        node["kernel"] = kernel
    return tree


def test_predict_in_uneven_batches_matches_one_apply(lenet):
    model, variables, _ = lenet
    images = np.random.default_rng(1).integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    logits = viz.predict(model, variables, images, batch_size=4)
    whole = model.apply(variables, images / np.float32(255))
    np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-5)


# --- figures ---------------------------------------------------------------------------------

def test_filter_grids_have_one_tile_per_filter(lenet):
    model, variables, _ = lenet
    fig = viz.plot_filters(variables)
    assert len(fig.axes) == 6 and "conv1" in fig._suptitle.get_text()
    fig = viz.plot_filters(variables, "conv2", model=model, image_shape=(28, 28, 1))
    assert len(fig.axes) == 16 and "mean over 6 input channels" in fig._suptitle.get_text()
    rgb = np.random.default_rng(0).normal(size=(3, 3, 3, 70))
    fig = viz.plot_filters(rgb, max_filters=64)
    assert len(fig.axes) == 64 and fig.axes[0].get_images()[0].get_array().shape == (3, 3, 3)
    with pytest.raises(UnknownNameError, match="conv1, conv2"):
        viz.plot_filters(variables, "fc1")


def test_activation_figure_has_the_input_and_a_tile_per_map(lenet):
    model, variables, image = lenet
    assert len(viz.plot_activations(model, variables, image).axes) == 1 + 6 + 16
    fig = viz.plot_activations(model, variables, image, ["conv2", "fc2"], max_maps=8)
    assert len(fig.axes) == 1 + 8 + 1


def test_confusion_history_misclassified_and_saliency_figures(lenet, tmp_path):
    matrix = viz.confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    fig = viz.plot_confusion(matrix, ["cat", "dog", "eel"], path=tmp_path / "c.png")
    assert len(fig.axes) == 3  # matrix, its colour bar, the per-class bars
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "eel"]
    assert (tmp_path / "c.png").stat().st_size > 0

    records = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_accuracy": 0.5 + e / 10,
                "test_accuracy": 0.4 + e / 10} for e in (1, 2, 3)]
    fig = viz.plot_history(records)
    assert len(fig.axes) == 2 and all(len(ax.get_lines()) == 2 for ax in fig.axes)

    labels = np.array([0, 1, 2, 0, 1])
    logits = np.log(np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8],
                              [0.2, 0.6, 0.2], [0.1, 0.35, 0.55]]))
    images = np.zeros((5, 8, 8, 1), np.uint8)
    fig = viz.worst_misclassified(images, labels, logits, k=16, class_names=["a", "b", "c"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["b\u2192a (0.70)", "a\u2192b (0.60)", "b\u2192c (0.55)"]

    model, variables, image = lenet
    batch = np.stack([image] * 3)
    maps = viz.saliency(model, variables, batch)
    fig = viz.plot_saliency(batch, maps, labels=[1, 2, 3], targets=[1, 2, 3])
    assert len(fig.axes) == 6 and fig.axes[1].get_title() == "saliency of 1"


def test_history_axes_tick_whole_epochs_even_for_one_epoch():
    def record(e):
        return {"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "train_accuracy": 0.9,
                "test_accuracy": 0.95}

    one = viz.plot_history([record(1)])
    assert all(list(ax.get_xticks()) == [1] for ax in one.axes)  # not 0.96, 0.98, ...
    three = viz.plot_history([record(e) for e in (1, 2, 3)])
    assert all(list(ax.get_xticks()) == [1, 2, 3] for ax in three.axes)
    many = viz.plot_history([record(e) for e in range(1, 41)])
    assert all(float(t).is_integer() for ax in many.axes for t in ax.get_xticks())


def test_figures_render_as_png_in_a_fresh_ipython_kernel():
    """Before pyplot's inline backend starts, IPython only calls _repr_png_ to show a figure."""
    formatters = pytest.importorskip("IPython.core.formatters")
    fig = viz.plot_confusion(viz.confusion_matrix([0, 1], [0, 0], 2))
    png = formatters.PNGFormatter()(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


# --- a real run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tfds_dir):
    from jaxcnn.cli import main

    workdir = tmp_path_factory.mktemp("viz_runs") / "lenet"
    assert main(["train", "--epochs", "2", "--workdir", str(workdir), "--data-dir", tfds_dir]) == 0
    return workdir


def test_write_all_draws_the_six_figures_of_a_run(finished_run):
    paths = viz.write_all(finished_run)
    assert [p.name for p in paths] == list(viz.FIGURES)
    for path in paths:
        assert path.parent == finished_run / "figures" and path.stat().st_size > 0
        pixels = plt.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
        assert pixels[..., :3].std() > 0.01, f"{path.name} is blank"
    fig = viz.plot_history(finished_run)
    assert fig._suptitle.get_text() == "lenet5 on digits"


def test_write_all_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="not a jaxcnn run"):
        viz.write_all(tmp_path)
    (tmp_path / "config.json").write_text('{"model": "lenet5", "dataset": "digits"}')
    with pytest.raises(RunDirError, match="no finished epoch"):
        viz.write_all(tmp_path)
    assert not (tmp_path / "figures").exists()
