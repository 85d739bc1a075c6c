"""Augmentations and preprocessing: shapes, ranges, determinism, and what each one does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.data import augment as aug
from jaxcnn.data.preprocess import center_crop, make_preprocess, random_resized_crop, to_unit
from jaxcnn.errors import ConfigError, InputShapeError, UnknownNameError

ALL = "crop:4,flip,rotate:10,translate:2,brightness:0.2,contrast:0.2,noise:0.02"


@pytest.fixture(scope="module")
def image():
    return jnp.asarray(np.random.default_rng(0).random((12, 10, 3), np.float32))


def test_parse_spec_defaults_and_errors():
    parsed = aug.parse_augment("crop, flip:1 ,Rotate:15")
    assert parsed.ops == (("crop", 4), ("flip", 1.0), ("rotate", 15.0))
    assert str(parsed) == "crop:4,flip:1,rotate:15"
    assert not any(aug.parse_augment(spec) for spec in ("", None, "none"))
    with pytest.raises(UnknownNameError) as err:
        aug.parse_augment("crop:4,cutout:8")
    assert "unknown augmentation 'cutout'" in str(err.value)
    assert all(name in str(err.value) for name in aug.AUGMENTATIONS)
    with pytest.raises(ConfigError, match="'flip' takes a value in \\[0, 1\\]"):
        aug.parse_augment("flip:2")
    with pytest.raises(ConfigError, match="'crop' takes a whole number"):
        aug.parse_augment("crop:2.5")
    with pytest.raises(ConfigError, match="'noise' takes a number"):
        aug.parse_augment("noise:lots")


@pytest.mark.parametrize("spec", [s for s in ALL.split(",")] + [ALL])
def test_each_keeps_shape_and_range_and_is_a_function_of_the_key(spec, image):
    fn = jax.jit(aug.parse_augment(spec))
    key = jax.random.key(3)
    out = fn(key, image)
    assert out.shape == image.shape and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(out, fn(key, image))
    outs = [fn(jax.random.key(k), image) for k in range(8)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])  # the key matters


def test_flip_flips_and_crop_with_padding_shifts_content():
    image = jnp.arange(2 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 1) / 10
    assert np.array_equal(aug.random_flip(jax.random.key(0), image, 1.0), image[:, ::-1])
    assert np.array_equal(aug.random_flip(jax.random.key(0), image, 0.0), image)
    big = jnp.ones((6, 6, 1))
    seen = set()
    for k in range(40):
        out = np.asarray(aug.random_crop(jax.random.key(k), big, 2))[..., 0]
        rows, cols = np.nonzero(out)
        box = (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max()))
        # The content moved by at most 2 pixels each way; zeros fill where it left.
        assert out[box[0]:box[2] + 1, box[1]:box[3] + 1].all() and out.sum() == len(rows)
        assert box[2] - box[0] >= 3 and box[3] - box[1] >= 3
        seen.add(box)
    assert len(seen) > 5 and (0, 0, 5, 5) in seen


def test_crop_is_an_exact_translation():
    image = jnp.asarray(np.random.default_rng(1).random((8, 8, 1), np.float32))
    for k in range(10):
        out = np.asarray(aug.random_crop(jax.random.key(k), image, 3))
        padded = np.pad(np.asarray(image), ((3, 3), (3, 3), (0, 0)))
        windows = [(t, l) for t in range(7) for l in range(7)
                   if np.array_equal(padded[t:t + 8, l:l + 8], out)]
        assert windows, "the output is a window of the zero-padded image"


def test_rotation_and_translation_geometry():
    image = jnp.zeros((9, 9, 1)).at[4, 6, 0].set(1.0)  # a dot right of the centre
    quarter = aug.affine(image, jnp.pi / 2, jnp.zeros(2))
    assert np.unravel_index(np.argmax(quarter[..., 0]), (9, 9)) in {(2, 4), (6, 4)}
    np.testing.assert_allclose(aug.affine(image, 0.0, jnp.zeros(2)), image, atol=1e-6)
    moved = aug.affine(image, 0.0, jnp.array([1.0, -2.0]))
    assert np.unravel_index(np.argmax(moved[..., 0]), (9, 9)) == (5, 4)
    # rotate then translate, fused into one warp, equals the two in sequence for whole pixels.
    fused = aug.parse_augment("rotate:0,translate:1")(jax.random.key(0), image)
    assert float(jnp.abs(fused).sum()) == pytest.approx(1.0, abs=1e-5)


def test_brightness_contrast_and_noise(image):
    key = jax.random.key(5)
    bright = aug.random_brightness(key, image, 0.3)
    delta = np.asarray(bright - image)
    inside = (np.asarray(bright) > 0) & (np.asarray(bright) < 1)
    assert np.ptp(delta[inside]) < 1e-6 and abs(delta[inside][0]) <= 0.3
    flat = aug.random_contrast(key, jnp.full((4, 4, 3), 0.25), 0.5)
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)  # a flat image has no contrast to change
    noisy = aug.random_noise(key, image, 0.5)
    np.testing.assert_array_equal(noisy, ops.salt_and_pepper(key, image, 0.5, 0.0, 1.0))
    changed = np.asarray(noisy != image).any(-1).mean()
    assert 0.3 < changed < 0.7


def test_augment_takes_one_image_not_a_batch():
    with pytest.raises(InputShapeError, match="jax.vmap"):
        aug.parse_augment("flip")(jax.random.key(0), jnp.zeros((2, 4, 4, 1)))


def test_named_preprocessing_values():
    pixels = jnp.asarray(np.array([0, 51, 255], np.uint8).reshape(1, 3, 1))
    unit = to_unit(pixels)
    np.testing.assert_allclose(unit[0, :, 0], [0.0, 0.2, 1.0], atol=1e-7)
    np.testing.assert_allclose(make_preprocess("centered", (1, 3, 1)).normalise(unit)[0, :, 0],
                               [-0.5, -0.3, 0.5], atol=1e-6)
    per_channel = make_preprocess("per_channel", (1, 3, 1), mean=(0.2,), std=(0.5,))
    np.testing.assert_allclose(per_channel.normalise(unit)[0, :, 0], [-0.4, 0.0, 1.6], atol=1e-6)
    mean = np.full((1, 3, 1), 0.2, np.float32)
    std = np.array([1, 2, 4], np.float32).reshape(1, 3, 1)
    per_pixel = make_preprocess("per_pixel", (1, 3, 1), pixel_mean=mean, pixel_std=std)
    np.testing.assert_allclose(per_pixel.normalise(unit)[0, :, 0], [-0.2, 0.0, 0.2], atol=1e-6)
    with pytest.raises(UnknownNameError, match="unknown preprocessing 'zscore'.*per_channel"):
        make_preprocess("zscore", (28, 28, 1))
    with pytest.raises(InputShapeError, match="one mean and one std per channel"):
        make_preprocess("per_channel", (32, 32, 3), mean=(0.5,), std=(0.5,))
    with pytest.raises(InputShapeError, match="no fixed shape"):
        make_preprocess("unit", (None, None, 3))


def test_imagenet_crops():
    pre = make_preprocess("imagenet", (None, None, 3), mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225), image_size=32)
    assert pre.output_shape == (32, 32, 3)
    image = jnp.asarray(np.random.default_rng(2).random((40, 60, 3), np.float32))
    rrc = jax.jit(random_resized_crop, static_argnums=2)
    crops = [rrc(jax.random.key(k), image, 32) for k in range(4)]
    assert all(c.shape == (32, 32, 3) for c in crops)
    assert not np.allclose(crops[0], crops[1])
    constant = jnp.full((40, 60, 3), 0.7)
    np.testing.assert_allclose(rrc(jax.random.key(0), constant, 32), 0.7, atol=1e-5)
    # The centre crop is the central square of side 224/256 of the shorter side.
    ramp = jnp.broadcast_to(jnp.arange(64, dtype=jnp.float32)[None, :, None], (64, 64, 1))
    centre = jax.jit(center_crop, static_argnums=(1, 2))(ramp, 56, 64 / 56)
    np.testing.assert_allclose(centre[0, :, 0], np.arange(4, 60), atol=1e-4)
