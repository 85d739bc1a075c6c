"""The input pipelines on the offline digits: per-host parts, exact padded evaluation,
determinism, resume, and agreement between the device, host and streaming pipelines."""
import jax
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import batches, sharding
from jaxcnn.errors import DataError, InputShapeError, UnknownNameError

AUGMENT = "crop:2,flip,brightness:0.2,contrast:0.2"  # quick to compile; test_data_augment: all


@pytest.fixture(scope="module")
def digits(tfds_dir):
    train = data.load_split("digits", "train", tfds_dir)
    test = data.load_split("digits", "test", tfds_dir)
    return {"dir": tfds_dir, "train": train, "test": test}


def pipe(digits, **kwargs):
    options = dict(batch_size=32, eval_batch_size=100, seed=7, data_dir=digits["dir"])
    return data.make_pipeline("digits", **{**options, **kwargs})


def as_np(batches) -> list[dict]:
    return [{k: np.asarray(v) for k, v in b.items()} for b in batches]


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("num", [10, 359, 1438])
def test_process_parts_are_disjoint_covering_and_match_tfds(count, num, digits):
    parts = [sharding.process_range(num, p, count) for p in range(count)]
    assert parts[0][0] == 0 and parts[-1][1] == num
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    if num == 359:  # TFDS cuts the digits test split the same way
        builder = data.get_builder("digits", digits["dir"])
        sizes = [builder.info.splits[sharding.split_for_process("test", p, count)].num_examples
                 for p in range(count)]
        assert sizes == [b - a for a, b in parts]


@pytest.mark.parametrize("mode", ["memory", "host", "stream"])
@pytest.mark.parametrize("eval_batch_size", [100, 359, 512])
def test_padded_evaluation_counts_every_example_once(mode, eval_batch_size, digits):
    pipeline = pipe(digits, mode=mode, eval_batch_size=eval_batch_size)
    out = as_np(pipeline.eval_batches("test"))
    assert len(out) == pipeline.num_eval_batches("test") == -(-359 // eval_batch_size)
    assert all(b["image"].shape == (eval_batch_size, 28, 28, 1) for b in out)
    mask = np.concatenate([b["mask"] for b in out]).astype(bool)
    assert mask.sum() == 359
    labels = np.concatenate([b["label"] for b in out])[mask]
    images = np.concatenate([b["image"] for b in out])[mask]
    if mode == "stream":  # same examples, in TFDS's reading order
        np.testing.assert_array_equal(np.sort(labels), np.sort(digits["test"][1]))
    else:
        np.testing.assert_array_equal(labels, digits["test"][1])
        np.testing.assert_array_equal(images, batches.to_float(digits["test"][0]))
    assert np.all(np.concatenate([b["image"] for b in out])[~mask] == 0)


@pytest.mark.parametrize("count", [2, 3])
def test_streaming_hosts_read_disjoint_parts_and_evaluate_exactly(count, digits):
    seen_eval, seen_train = [], []
    for index in range(count):
        # Each pipeline plays one of `count` hosts.
        pipeline = data.StreamingDataset(
            data.dataset_spec("digits", digits["dir"]),
            data.prepared_builder("digits", digits["dir"]),
            data.make_preprocess("unit", (28, 28, 1)), data.parse_augment(None),
            batch_size=24, eval_batch_size=30, seed=3, process_index=index, process_count=count)
        out = as_np(pipeline.eval_batches("test"))
        assert len(out) == pipeline.num_eval_batches("test")  # every host: same count
        assert all(len(b["mask"]) == 30 // count for b in out)
        for b in out:
            keep = b["mask"].astype(bool)
            seen_eval += [im.tobytes() + bytes([lb])
                          for im, lb in zip(b["image"][keep], b["label"][keep])]
        for b in as_np(pipeline.train_batches(1)):
            seen_train += [im.tobytes() for im in b["image"]]
    expected = [im.tobytes() + bytes([lb]) for im, lb in
                zip(batches.to_float(digits["test"][0]), digits["test"][1])]
    assert sorted(seen_eval) == sorted(expected)  # disjoint and covering
    assert len(set(seen_train)) == len(seen_train)  # no example twice in an epoch across hosts


def test_same_seed_same_batches_and_resume_continues_exactly(digits):
    first = as_np(pipe(digits, augment=AUGMENT).train_batches(2))
    again = pipe(digits, augment=AUGMENT)
    assert all(np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
               for a, b in zip(first, as_np(again.train_batches(2))))
    resumed = as_np(again.train_batches(2, start_step=30))
    assert len(resumed) == 44 - 30
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(first[30:], resumed))
    other_seed = as_np(pipe(digits, augment=AUGMENT, seed=8).train_batches(2))
    assert not np.array_equal(first[0]["image"], other_seed[0]["image"])
    next_epoch = as_np(again.train_batches(3))
    assert not np.array_equal(first[0]["label"], next_epoch[0]["label"])


def test_device_batches_equal_host_gathers_of_the_same_permutation(digits):
    pipeline = pipe(digits, mode="memory")
    order = np.asarray(pipeline.epoch_order(1))
    assert sorted(order.tolist()) == list(range(1438))
    images, labels = digits["train"]
    for step, batch in enumerate(pipeline.train_batches(1)):
        index = order[step * 32:(step + 1) * 32]
        np.testing.assert_array_equal(np.asarray(batch["image"]), batches.to_float(images[index]))
        np.testing.assert_array_equal(np.asarray(batch["label"]), labels[index])
    # The host pipeline is the existing numpy batching.
    host = as_np(pipe(digits, mode="host").train_batches(1))
    for got, want in zip(host, batches.train_batches(images, labels, 32, 7, 1)):
        np.testing.assert_array_equal(got["image"], want["image"])


def test_streaming_is_deterministic_and_augments_on_the_device(digits):
    runs = [as_np(pipe(digits, mode="stream", augment=AUGMENT, shuffle_buffer=500)
                  .train_batches(1, start_step=40)) for _ in range(2)]
    assert len(runs[0]) == 4
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(*runs))
    full = as_np(pipe(digits, mode="stream", augment=AUGMENT, shuffle_buffer=500).train_batches(1))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(full[40:], runs[0]))


def test_preprocessings_through_the_pipeline(digits):
    images = digits["train"][0]
    spec = data.dataset_spec("digits", digits["dir"])
    assert spec.stats_source.startswith("computed") and 0.1 < spec.mean[0] < 0.3
    per_channel = np.concatenate([np.asarray(b["image"]) for b in
                                  pipe(digits, preprocess="per_channel").train_batches(1)])
    assert abs(per_channel.mean()) < 0.05 and abs(per_channel.std() - 1) < 0.05
    per_pixel = np.concatenate([np.asarray(b["image"]) for b in
                                pipe(digits, preprocess="per_pixel").train_batches(1)])
    assert np.abs(per_pixel.mean(0)).max() < 0.2  # every pixel about centred
    centred = next(iter(pipe(digits, preprocess="centered").eval_batches("test")))
    assert float(centred["image"][0].min()) == -0.5
    crops = pipe(digits, preprocess="imagenet", image_size=32, augment="flip")
    assert crops.input_shape == (32, 32, 1)
    assert next(iter(crops.train_batches(1)))["image"].shape == (32, 32, 32, 1)
    assert images.dtype == np.uint8


def test_a_mesh_gives_global_arrays_with_the_same_content(digits):
    mesh = data.data_mesh()
    plain = next(iter(pipe(digits, augment=AUGMENT).train_batches(1)))
    meshed = next(iter(pipe(digits, augment=AUGMENT, mesh=mesh).train_batches(1)))
    assert isinstance(meshed["image"].sharding, jax.sharding.NamedSharding)
    np.testing.assert_array_equal(np.asarray(plain["image"]), np.asarray(meshed["image"]))
    host = next(iter(pipe(digits, mode="host", mesh=mesh).eval_batches("test")))
    assert host["mask"].shape == (100,) and isinstance(host["mask"], jax.Array)
    assert sharding.local_rows(32, mesh) == slice(0, 32)


def test_bad_requests_are_named(digits):
    with pytest.raises(DataError, match="dataset 'digits': batch size 2000 is larger than the "
                                        "training split \\(1438 examples\\)"):
        pipe(digits, batch_size=2000)
    with pytest.raises(UnknownNameError, match="unknown input mode 'gpu'"):
        pipe(digits, mode="gpu")
    with pytest.raises(UnknownNameError, match="unknown augmentation 'mixup'"):
        pipe(digits, augment="flip,mixup")
    with pytest.raises(InputShapeError,
                       match=r"\(28, 28, 1\) but lenet on cifar takes \(32, 32, 3\)"):
        data.check_image_shape("digits", (28, 28, 1), (32, 32, 3), "lenet on cifar")
    data.check_image_shape("digits", (28, 28, 1), (None, None, 1))
    assert data.choose_mode(data.dataset_spec("digits", digits["dir"])) == "memory"
    spec = data.dataset_spec("digits", digits["dir"])
    assert data.choose_mode(spec, memory_limit=1000) == "stream"
