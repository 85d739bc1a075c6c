"""Tests of jaxcnn.ops: hand-computed lecture examples, then agreement with lax and SciPy."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxcnn import ops
from jaxcnn.errors import ConfigError, InputShapeError, JaxCNNError, UnknownNameError

# ---------------------------------------------------------------------------------------------
# conv2d: hand-computed examples


def test_vertical_edge_filter_lecture_example():
    # Left half bright (10), right half dark (0); the filter [1, 0, -1] in every row responds
    # where brightness drops from left to right: 3 rows x (10 - 0) = 30 in the middle columns.
    image = np.zeros((6, 6))
    image[:, :3] = 10.0
    kernel = np.array([[1.0, 0.0, -1.0]] * 3)
    expected = np.array([[0.0, 30.0, 30.0, 0.0]] * 4)
    out = ops.conv2d(image, kernel)
    assert out.shape == (4, 4) == (ops.conv_output_size(6, 3),) * 2
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_conv_stride_2_padding_1():
    # I[r, c] = 5r + c on 5x5; 3x3 of ones, stride 2, one ring of zeros: (5 + 2 - 3) // 2 + 1 = 3.
    # Each output sums the in-image part of the window centred on (2i, 2j):
    #   (0,0): rows 0-1, cols 0-1: 0+1+5+6 = 12     (0,1): rows 0-1, cols 1-3: 27 ...
    image = np.arange(25.0).reshape(5, 5)
    expected = np.array([[12.0, 27.0, 24.0], [63.0, 108.0, 81.0], [72.0, 117.0, 84.0]])
    out = ops.conv2d(image, np.ones((3, 3)), stride=2, padding=1)
    assert out.shape == (3, 3) == (ops.conv_output_size(5, 3, padding=1, stride=2),) * 2
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_conv_stride_floors_like_pytorch():
    # (6 - 3) / 2 + 1 = 2.5 -> 2 windows per axis, at columns 0-2 and 2-4; column 5 is never read.
    image = np.arange(36.0).reshape(6, 6)
    out = ops.conv2d(image, np.ones((3, 3)), stride=2)
    assert out.shape == (2, 2)
    changed = image.copy()
    changed[:, 5] = changed[5, :] = -100.0
    np.testing.assert_array_equal(np.asarray(ops.conv2d(changed, np.ones((3, 3)), stride=2)),
                                  np.asarray(out))
    # I[r, c] = 6r + c; the window at (0, 0) sums rows 0-2, cols 0-2: 9 * 7 = 63.
    np.testing.assert_array_equal(np.asarray(out), [[63.0, 81.0], [171.0, 189.0]])


def test_conv_rectangular_stride_and_padding_pairs():
    image = np.arange(12.0).reshape(3, 4)  # I[r, c] = 4r + c
    out = ops.conv2d(image, np.array([[1.0, -1.0]]), stride=(1, 2), padding=(0, 1))
    # padded columns: [0, I0, I1, I2, I3, 0]; windows at padded cols (0,1), (2,3), (4,5):
    # 0 - I0, I1 - I2, I3 - 0
    expected = np.array([[-(4 * r), -1.0, 4 * r + 3] for r in range(3)])
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_conv_three_channels_summed_with_bias():
    # channel 0: I[r, c] = 4r + c with [[1, 0], [0, -1]] -> I[r, c] - I[r+1, c+1] = -5
    # channel 1: ones with a kernel of 0.25s -> 1;  channel 2: twos with [[0, 1], [0, 0]] -> 2
    # sum -5 + 1 + 2 = -2, plus bias 0.5 -> -1.5 at every one of the 3x3 positions
    image = np.stack([np.arange(16.0).reshape(4, 4), np.ones((4, 4)), 2 * np.ones((4, 4))], -1)
    kernel = np.stack([np.array([[1.0, 0.0], [0.0, -1.0]]), np.full((2, 2), 0.25),
                       np.array([[0.0, 1.0], [0.0, 0.0]])], -1)
    out = ops.conv2d(image, kernel, bias=0.5)
    np.testing.assert_array_equal(np.asarray(out), np.full((3, 3), -1.5))
    per_channel = sum(ops.conv2d(image[..., c], kernel[..., c]) for c in range(3))
    np.testing.assert_allclose(np.asarray(out), np.asarray(per_channel) + 0.5)


def test_conv_integer_image_gives_float():
    out = ops.conv2d(np.ones((3, 3), dtype=np.int32), np.ones((3, 3), dtype=np.int32))
    assert jnp.issubdtype(out.dtype, jnp.floating) and float(out[0, 0]) == 9.0


# ---------------------------------------------------------------------------------------------
# pooling

POOL_X = np.array([[1.0, 2.0, 5.0, 6.0],
                   [3.0, 4.0, 7.0, 8.0],
                   [9.0, 0.0, 1.0, 1.0],
                   [2.0, 5.0, 3.0, 7.0]])


def test_max_and_avg_pool_4x4():
    np.testing.assert_array_equal(np.asarray(ops.max_pool2d(POOL_X)), [[4.0, 8.0], [9.0, 7.0]])
    np.testing.assert_array_equal(np.asarray(ops.avg_pool2d(POOL_X)), [[2.5, 6.5], [4.0, 3.0]])
    # 3x3 windows, stride 1: overlapping windows, (4 - 3) // 1 + 1 = 2
    np.testing.assert_array_equal(np.asarray(ops.max_pool2d(POOL_X, 3, 1)),
                                  [[9.0, 8.0], [9.0, 8.0]])


def test_avg_pool_padding_counts_zeros():
    # (4 + 2 - 2) // 2 + 1 = 3; corner windows hold one real pixel and three zeros, divided by 4
    expected = np.array([[1 / 4, 7 / 4, 6 / 4], [12 / 4, 12 / 4, 9 / 4], [2 / 4, 8 / 4, 7 / 4]])
    np.testing.assert_allclose(np.asarray(ops.avg_pool2d(POOL_X, padding=1)), expected)


def test_pooling_is_per_channel():
    x = np.stack([POOL_X, 10 * POOL_X, -POOL_X], -1)
    out = ops.max_pool2d(x)
    assert out.shape == (2, 2, 3)
    for c, scale in enumerate((1, 10, -1)):
        np.testing.assert_array_equal(np.asarray(out[..., c]),
                                      np.asarray(ops.max_pool2d(scale * POOL_X)))
    np.testing.assert_allclose(np.asarray(ops.avg_pool2d(x)[..., 1]),
                               10 * np.asarray(ops.avg_pool2d(POOL_X)))


# ---------------------------------------------------------------------------------------------
# filters


def test_sobel_on_step_image():
    # Columns 0-2 are 0 and columns 3-5 are 1 (brighter to the right). gx is (column smoothing
    # [1, 2, 1] summed over the rows present) x (I[c+1] - I[c-1]); the zero padding makes the
    # right border a downward step (-1) and the top and bottom rows miss one smoothing row (3).
    image = np.zeros((6, 6))
    image[:, 3:] = 1.0
    rows = np.array([3.0, 4.0, 4.0, 4.0, 4.0, 3.0])
    diff = np.array([0.0, 0.0, 1.0, 1.0, 0.0, -1.0])
    expected_gx = np.outer(rows, diff)
    # gy: no change down the interior rows; at the top the padding row above is 0 (a step up to
    # the smoothed row [0, 0, 1, 3, 4, 3]), at the bottom the step goes back down.
    smoothed = np.array([0.0, 0.0, 1.0, 3.0, 4.0, 3.0])
    expected_gy = np.zeros((6, 6))
    expected_gy[0], expected_gy[5] = smoothed, -smoothed
    gx, gy = ops.sobel_xy(image)
    np.testing.assert_array_equal(np.asarray(gx), expected_gx)
    np.testing.assert_array_equal(np.asarray(gy), expected_gy)
    magnitude = ops.sobel(image)
    np.testing.assert_allclose(np.asarray(magnitude), np.hypot(expected_gx, expected_gy), rtol=1e-6)
    # the interior edge: 4 on the two columns either side of the step, zero elsewhere
    np.testing.assert_array_equal(np.asarray(magnitude)[2:4, :5], [[0, 0, 4, 4, 0]] * 2)


def test_sobel_matches_scipy_and_works_per_channel():
    x = np.random.default_rng(0).random((9, 11, 2)).astype(np.float32)
    gx, gy = ops.sobel_xy(x)
    for c in range(2):
        np.testing.assert_allclose(np.asarray(gx[..., c]),
                                   ndimage.sobel(x[..., c], axis=1, mode="constant"), atol=1e-5)
        np.testing.assert_allclose(np.asarray(gy[..., c]),
                                   ndimage.sobel(x[..., c], axis=0, mode="constant"), atol=1e-5)


def test_gaussian_kernel_closed_form():
    for sigma, size in ((1.0, 7), (0.5, 5), (2.0, 13)):
        kernel = np.asarray(ops.gaussian_kernel(sigma))
        assert kernel.shape == (size, size)  # 2 * ceil(3 sigma) + 1
        x = np.arange(size) - size // 2
        closed = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
        np.testing.assert_allclose(kernel, closed / closed.sum(), rtol=1e-6)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    # 3x3 at sigma 1: separable weights [a, 1, a] / (1 + 2a) with a = exp(-1/2)
    a = np.exp(-0.5)
    w = np.array([a, 1.0, a]) / (1 + 2 * a)
    np.testing.assert_allclose(np.asarray(ops.gaussian_kernel(1.0, size=3)), np.outer(w, w),
                               rtol=1e-6)


def test_median_filter_removes_isolated_salt_exactly():
    image = np.full((5, 5), 0.5)
    image[2, 2] = 1.0  # salt in the middle
    image[0, 0] = 1.0  # and in a corner: edge padding gives it 4 copies of itself, 5 of 0.5
    np.testing.assert_array_equal(np.asarray(ops.median_filter(image)), np.full((5, 5), 0.5))
    step = np.zeros((5, 6))
    step[:, 3:] = 1.0  # a median keeps a step edge exactly where a blur would smear it
    np.testing.assert_array_equal(np.asarray(ops.median_filter(step)), step)


def test_box_blur_and_sharpen():
    x = np.random.default_rng(1).random((7, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ops.box_blur(x)),
                               np.asarray(ops.conv2d(x, np.full((3, 3), 1 / 9), padding=1)),
                               rtol=1e-5)
    classic = np.array([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(ops.sharpen(x)),
                               np.asarray(ops.conv2d(x, classic, padding=1)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ops.sharpen(x, amount=0.0)), x)
    flat = np.full((5, 5), 0.3)  # weights sum to 1: flat regions unchanged away from the border
    np.testing.assert_allclose(np.asarray(ops.sharpen(flat, 2.0, mode="edge")), flat, rtol=1e-6)


def test_salt_and_pepper_fraction_and_determinism():
    image = np.full((200, 200), 0.5, dtype=np.float32)
    key = jax.random.key(0)
    noisy = np.asarray(ops.salt_and_pepper(key, image, 0.1))
    hit = noisy != 0.5
    assert set(np.unique(noisy)) <= {0.0, 0.5, 1.0}
    assert abs(hit.mean() - 0.1) < 0.01  # 40,000 pixels: standard deviation 0.0015
    assert abs((noisy == 1.0).sum() / hit.sum() - 0.5) < 0.05
    np.testing.assert_array_equal(np.asarray(ops.salt_and_pepper(key, image, 0.1)), noisy)
    assert not np.array_equal(np.asarray(ops.salt_and_pepper(jax.random.key(1), image, 0.1)),
                              noisy)
    rgb = np.asarray(ops.salt_and_pepper(key, np.full((20, 20, 3), 0.5), 0.3, low=-1, high=2))
    assert (rgb == rgb[..., :1]).all()  # a hit pixel is set in all channels
    assert set(np.unique(rgb)) == {-1.0, 0.5, 2.0}
    np.testing.assert_array_equal(np.asarray(ops.salt_and_pepper(key, image, 0.0)), image)
    assert set(np.unique(np.asarray(ops.salt_and_pepper(key, image, 1.0)))) == {0.0, 1.0}


# ---------------------------------------------------------------------------------------------
# size arithmetic


@pytest.mark.parametrize("args, expected", [
    ((32, 5), 28),                       # LeNet C1
    ((28, 5, 2), 28),                    # LeNet C1 on MNIST, padded to keep the size
    ((227, 11, 0, 4), 55),               # AlexNet conv1
    ((224, 7, 3, 2), 112),               # ResNet stem
    ((112, 3, 1, 2), 56),                # ResNet max pool
    ((224, 3, 1, 1), 224),               # VGG "same" 3x3
    ((6, 3, 0, 2), 2),                   # floored: 2.5 -> 2
    ((32, 3, 0, 1, 2), 28),              # dilation 2: a 3x3 kernel covers 5x5
])
def test_conv_output_size_table(args, expected):
    assert ops.conv_output_size(*args) == expected


def test_conv_output_size_errors():
    with pytest.raises(InputShapeError, match="does not fit"):
        ops.conv_output_size(3, 5)
    with pytest.raises(ConfigError, match="stride must be at least 1"):
        ops.conv_output_size(32, 3, stride=0)
    with pytest.raises(ConfigError, match="padding"):
        ops.conv_output_size(32, 3, padding=-1)
    with pytest.raises(ConfigError, match="must be an int"):
        ops.conv_output_size(32.0, 3)


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_shapes():
    with pytest.raises(InputShapeError, match=r"\(3, 3, 2\).*2 channels.*\(8, 8, 3\)"):
        ops.conv2d(np.ones((8, 8, 3)), np.ones((3, 3, 2)))
    with pytest.raises(InputShapeError, match=r"\(kh, kw, 3\)"):
        ops.conv2d(np.ones((8, 8, 3)), np.ones((3, 3)))
    with pytest.raises(InputShapeError, match=r"7x7 window is bigger.*\(4, 4\).*\(1, 1\)"):
        ops.conv2d(np.ones((4, 4)), np.ones((7, 7)), padding=1)
    with pytest.raises(InputShapeError, match="jax.vmap"):
        ops.conv2d(np.ones((2, 8, 8, 3)), np.ones((3, 3, 3)))
    with pytest.raises(ConfigError, match="stride must be at least 1"):
        ops.conv2d(np.ones((4, 4)), np.ones((3, 3)), stride=0)
    with pytest.raises(InputShapeError, match="window is bigger"):
        ops.max_pool2d(np.ones((2, 2)), 3)
    with pytest.raises(ConfigError, match="odd"):
        ops.median_filter(np.ones((4, 4)), 2)
    with pytest.raises(ConfigError, match="sigma must be positive"):
        ops.gaussian_kernel(0.0)
    with pytest.raises(ConfigError, match="unknown padding mode"):
        ops.gaussian_blur(np.ones((4, 4)), 1.0, mode="wrap")
    with pytest.raises(ConfigError, match=r"amount must be in \[0, 1\]"):
        ops.salt_and_pepper(jax.random.key(0), np.ones((4, 4)), 1.5)
    assert issubclass(InputShapeError, JaxCNNError) and issubclass(JaxCNNError, ValueError)


# ---------------------------------------------------------------------------------------------
# agreement with lax and SciPy on random inputs


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 0), (2, 1), (3, 2), ((1, 2), (2, 0))])
@pytest.mark.parametrize("channels", [None, 3])
def test_conv2d_matches_lax(stride, padding, channels):
    rng = np.random.default_rng(2)
    shape = (11, 13) if channels is None else (11, 13, channels)
    image = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((3, 4) + shape[2:]).astype(np.float32)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    lhs = image.reshape(image.shape[:2] + (-1,))[None]
    rhs = kernel.reshape(kernel.shape[:2] + (-1, 1))
    want = jax.lax.conv_general_dilated(
        lhs, rhs, (sh, sw), ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)[0, ..., 0]
    got = ops.conv2d(image, kernel, stride=stride, padding=padding, bias=0.25)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want) + 0.25, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, stride, padding", [(2, None, 0), (3, 2, 0), (3, 1, 1), (2, 3, 1)])
def test_pooling_matches_reduce_window(size, stride, padding):
    x = np.random.default_rng(3).standard_normal((10, 9, 2)).astype(np.float32)
    s = size if stride is None else stride
    want_max = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (size, size, 1), (s, s, 1), "VALID")
    np.testing.assert_array_equal(np.asarray(ops.max_pool2d(x, size, stride)), np.asarray(want_max))
    pads = ((padding, padding), (padding, padding), (0, 0))
    want_avg = jax.lax.reduce_window(x, 0.0, jax.lax.add, (size, size, 1), (s, s, 1), pads)
    np.testing.assert_allclose(np.asarray(ops.avg_pool2d(x, size, stride, padding)),
                               np.asarray(want_avg) / size**2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode, scipy_mode", [("constant", "constant"), ("edge", "nearest"),
                                              ("symmetric", "reflect"), ("reflect", "mirror")])
def test_filters_match_scipy(mode, scipy_mode):
    x = np.random.default_rng(4).random((12, 15, 2)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(ops.median_filter(x, 3, mode=mode)),
        ndimage.median_filter(x, size=(3, 3, 1), mode=scipy_mode), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(ops.median_filter(x[..., 0], (5, 3), mode=mode)),
        ndimage.median_filter(x[..., 0], size=(5, 3), mode=scipy_mode), rtol=1e-6)
    sigma = 0.8 if mode in ("constant", "symmetric") else 1.5
    radius = int(np.ceil(3 * sigma))  # the default size 2 * ceil(3 sigma) + 1
    want = ndimage.gaussian_filter(x, (sigma, sigma, 0), mode=scipy_mode,
                                   radius=(radius, radius, 0))
    np.testing.assert_allclose(np.asarray(ops.gaussian_blur(x, sigma, mode=mode)), want,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ops.box_blur(x[..., 1], 5, mode=mode)),
                               ndimage.uniform_filter(x[..., 1], 5, mode=scipy_mode),
                               rtol=1e-5, atol=1e-6)


def test_everything_works_under_jit():
    rng = np.random.default_rng(5)
    image = jnp.asarray(rng.random((16, 16, 3)), jnp.float32)
    gray = image[..., 0]
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3)), jnp.float32)
    conv = jax.jit(ops.conv2d, static_argnames=("stride", "padding"))
    np.testing.assert_allclose(conv(image, kernel, stride=2, padding=1, bias=jnp.float32(1.0)),
                               ops.conv2d(image, kernel, stride=2, padding=1, bias=1.0),
                               rtol=1e-5)
    cases = [
        (functools.partial(ops.max_pool2d, size=3, stride=2), image),
        (functools.partial(ops.avg_pool2d, size=2, padding=1), image),
        (ops.sobel, image),
        (lambda x: ops.sobel_xy(x)[1], gray),
        (functools.partial(ops.gaussian_blur, sigma=1.2, mode="edge"), image),
        (ops.box_blur, gray),
        (ops.median_filter, image),
    ]
    for fn, x in cases:
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(x)), np.asarray(fn(x)), rtol=1e-5,
                                   atol=1e-6)
    # traced amounts and sigmas (a size is then needed for the Gaussian)
    sharpen = jax.jit(ops.sharpen)
    np.testing.assert_allclose(sharpen(gray, 0.5), ops.sharpen(gray, 0.5), rtol=1e-5, atol=1e-6)
    kernel_fn = jax.jit(ops.gaussian_kernel, static_argnames="size")
    np.testing.assert_allclose(kernel_fn(1.5, size=9), ops.gaussian_kernel(1.5, 9), rtol=1e-6)
    with pytest.raises(ConfigError, match="give size="):
        jax.jit(ops.gaussian_kernel)(1.5)
    noise = jax.jit(ops.salt_and_pepper)
    key = jax.random.key(3)
    np.testing.assert_array_equal(noise(key, image, 0.2), ops.salt_and_pepper(key, image, 0.2))
    batch = jax.jit(jax.vmap(functools.partial(ops.conv2d, stride=2)))(
        jnp.stack([image, 2 * image]), jnp.stack([kernel, kernel]))
    np.testing.assert_allclose(batch[1], 2 * ops.conv2d(image, kernel, stride=2), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# receptive fields


def test_lenet5_receptive_fields_by_hand():
    # 28x28 input, conv1 5x5 padded by 2: r = 1 + 4 = 5, j = 1, output 28
    # pool1 2x2/2: r = 5 + 1*1 = 6, j = 2, output 14
    # conv2 5x5:   r = 6 + 4*2 = 14, j = 2, output 10
    # pool2 2x2/2: r = 14 + 1*2 = 16, j = 4, output 5
    rows = ops.receptive_field("lenet5")
    assert [r.name for r in rows] == ["conv1", "pool1", "conv2", "pool2"]
    assert [r.kind for r in rows] == ["conv", "max_pool", "conv", "max_pool"]
    assert [r.receptive_field for r in rows] == [(5, 5), (6, 6), (14, 14), (16, 16)]
    assert [r.jump for r in rows] == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert [r.output_size for r in rows] == [(28, 28), (14, 14), (10, 10), (5, 5)]
    assert [r.kernel for r in rows] == [(5, 5), (2, 2), (5, 5), (2, 2)]
    assert rows[0].padding == ((2, 2), (2, 2)) and rows[0].path.endswith("conv1")
    # unit (0, 0) of conv1 is centred on pixel (0, 0); of pool1 between pixels 0 and 1
    assert rows[0].start == (0.0, 0.0) and rows[1].start == (0.5, 0.5)
    table = ops.format_receptive_field(rows)
    assert table.splitlines()[0].split()[:3] == ["layer", "kind", "kernel"]
    assert "pool2" in table and " 16 " in table
    # on 32x32 LeNet-5 does not pad: conv1 is 28x28, the fields are the same
    rows32 = ops.receptive_field("lenet5", (32, 32, 1))
    assert [r.receptive_field[0] for r in rows32] == [5, 6, 14, 16]
    assert rows32[0].padding == ((0, 0), (0, 0)) and rows32[0].start == (2.0, 2.0)


class _Branchy(nn.Module):
    """Two branches (one inside jit, all inside remat), a residual 1x1 and a strided slice."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        def block(x):
            pooled = jax.jit(lambda y: nn.max_pool(y, (3, 3), (2, 2), "SAME"))
            a = pooled(nn.Conv(4, (3, 3), name="a")(x))
            b = nn.Conv(4, (5, 5), strides=2, kernel_dilation=2, name="b")(x)
            return jnp.concatenate([a, b], axis=-1)

        x = jax.checkpoint(block)(x)
        x = x + nn.Conv(8, (1, 1), name="mix")(x)
        x = x[:, ::2, ::2]
        return nn.avg_pool(x, (2, 2), (2, 2))


def test_receptive_field_follows_branches_and_nested_jaxprs():
    # a: 3x3 -> r 3, j 1; max pool 3/2 -> r 3 + 2 = 5, j 2
    # b: 5x5 dilated by 2 (covers 9), stride 2 -> r 9, j 2; concatenation keeps the larger: 9
    # mix 1x1 -> 9; x[::2] -> j 4; avg pool 2/2 -> r 9 + 1*4 = 13, j 8
    rows = ops.receptive_field(_Branchy(), (32, 32, 3))
    assert [r.name for r in rows] == ["conv1", "pool1", "conv2", "conv3", "pool2"]
    assert [r.receptive_field[0] for r in rows] == [3, 5, 9, 9, 13]
    assert [r.jump[0] for r in rows] == [1, 2, 2, 2, 8]
    assert [r.output_size[0] for r in rows] == [32, 16, 16, 16, 4]
    assert rows[2].dilation == (2, 2) and rows[4].kind == "avg_pool"
    assert "dilation 2" in ops.format_receptive_field(rows)


def test_receptive_field_errors():
    with pytest.raises(UnknownNameError, match="lenet5"):
        ops.receptive_field("no_such_net")
    with pytest.raises(ConfigError, match="input_shape"):
        ops.receptive_field(_Branchy())
    with pytest.raises(InputShapeError, match=r"\(H, W, C\)"):
        ops.receptive_field("lenet5", (28, 28))

    class Looped(nn.Module):  # a layer repeated by lax.scan is not unrolled: say so, not guess
        @nn.compact
        def __call__(self, x):
            step = lambda y, _: (nn.max_pool(y, (2, 2), (1, 1), "SAME"), None)  # noqa: E731
            return jax.lax.scan(step, x, None, length=3)[0]

    with pytest.raises(JaxCNNError, match="scan"):
        ops.receptive_field(Looped(), (8, 8, 1))


def _registered():
    from jaxcnn.models import list_models

    return list_models()


def _skip_unless_registered(name):
    if name not in _registered():
        pytest.skip(f"{name} is not registered yet")


@pytest.mark.parametrize("name", ["mnist_cnn", "keras_cnn", "lenet5_1998", "resnet20"])
def test_receptive_field_of_small_registered_models(name):
    _skip_unless_registered(name)
    rows = ops.receptive_field(name)
    assert rows and rows[0].kind == "conv"
    for row in rows:
        assert row.receptive_field[0] >= row.kernel[0] and row.jump[0] >= 1


def test_receptive_field_of_a_model_without_convolutions_is_empty():
    _skip_unless_registered("mlp")
    assert ops.receptive_field("mlp") == []


@pytest.mark.parametrize("name, expected", [
    # 3x3 convs and 2x2 pools: 3, 5 | 6 | 10, 14 | 16 | 24, 32, 40 | 44 | ... | 196 | 212
    ("vgg16", [3, 5, 6, 10, 14, 16, 24, 32, 40, 44, 60, 76, 92, 100, 132, 164, 196, 212]),
    # conv1 11/4 -> 11; pool 3/2 -> 19; conv2 5 -> 51; pool -> 67; conv3-5 -> 99, 131, 163;
    # pool5 -> 195
    ("alexnet", [11, 19, 51, 67, 99, 131, 163, 195]),
])
def test_receptive_field_of_classic_models_by_hand(name, expected):
    _skip_unless_registered(name)
    fields = [r.receptive_field[0] for r in ops.receptive_field(name)]
    assert fields[:len(expected)] == expected


@pytest.mark.parametrize("name, largest", [
    # the published fields of the torchvision-style networks (stride in the first block of a
    # stage), e.g. the tables of Araujo et al., Distill 2019, for MobileNet V2
    ("resnet18", 435), ("resnet50", 427), ("mobilenet_v2", 491),
])
def test_receptive_field_of_branching_models(name, largest):
    _skip_unless_registered(name)
    assert max(r.receptive_field[0] for r in ops.receptive_field(name)) == largest
