"""Tests of idarts.datasets on the installed Fashion-MNIST and on small files made in tmp_path.

The real-data tests read /usr/share/datasets/fashion-mnist, which the Debian
package dataset-fashion-mnist installs.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idarts import datasets
from idarts.datasets import (
    DATASETS,
    Cutout,
    DataFormatError,
    DataNotFoundError,
    RandomCropWithPadding,
    RandomHorizontalFlipTensor,
    build_search_data,
    build_train_data,
    get_spec,
    load_dataset,
    search_split,
    stratified_subset,
    train_transforms,
)
from idarts.datasets import test_transforms as eval_transforms

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------
# Helpers that write small datasets in the real file formats
# ---------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when ``compress``)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()

    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_fake_fashion(directory: Path, count: int = 20, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Write both Fashion-MNIST splits with ``count`` random images each; return the train arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)

    for prefix in ("train", "t10k"):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str, bytes_keys: bool) -> None:
    """Pickle one batch as the CIFAR archives do: a dict with a (N, 3072) uint8 ``data`` array."""
    batch = {
        "batch_label": path.name,
        "data": data,
        label_key: labels,
        "filenames": [f"image_{index}.png" for index in range(len(labels))],
    }
    if bytes_keys:
        batch = {key.encode("latin1"): value for key, value in batch.items()}
    with open(path, "wb") as stream:
        pickle.dump(batch, stream, protocol=2)


def write_fake_cifar10(root: Path, per_batch: int = 4, test_count: int = 6) -> np.ndarray:
    """Write a tiny cifar-10-batches-py under ``root``; return the first batch's data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    first = None
    for number in range(1, 6):
        data = ((np.arange(per_batch * 3072) + number) % 256).astype(np.uint8).reshape(per_batch, 3072)
        labels = [(number + index) % 10 for index in range(per_batch)]
        write_cifar_batch(folder / f"data_batch_{number}", data, labels, "labels", bytes_keys=False)
        if first is None:
            first = data

    test_data = np.zeros((test_count, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test_data, [index % 10 for index in range(test_count)], "labels", bytes_keys=False)

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, stream, protocol=2)
    return first


def write_image_tree(root: Path, split: str, classes: list[str], per_class: int) -> None:
    for class_index, class_name in enumerate(classes):
        folder = root / split / class_name
        folder.mkdir(parents=True)
        for image_index in range(per_class):
            colour = (40 * class_index, 10 * image_index, 200)
            Image.new("RGB", (40, 30), colour).save(folder / f"{class_name}_{image_index}.png")


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_registry_specs_consistent():
    assert set(DATASETS) == {"fashion-mnist", "cifar10", "cifar100", "imagenet"}
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert len(spec.mean) == spec.in_channels
        assert len(spec.std) == spec.in_channels
        assert spec.how_to_get

    assert get_spec("fashion-mnist").default_dir == str(FASHION_DIR)
    assert [get_spec(name).image_size for name in ("fashion-mnist", "cifar10", "cifar100", "imagenet")] == [28, 32, 32, 224]


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError) as raised:
        get_spec("mnist")
    message = str(raised.value)
    assert "'mnist'" in message
    for name in DATASETS:
        assert name in message

    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset("mnist", "train")


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="validation"):
        load_dataset("fashion-mnist", "validation")


# ---------------------------------------------------------------------------
# Real Fashion-MNIST
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_train():
    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="module")
def fashion_test():
    return load_dataset("fashion-mnist", "test")


def test_fashion_real_counts_and_shapes(fashion_train, fashion_test):
    assert len(fashion_train) == 60000
    assert len(fashion_test) == 10000

    image, label = fashion_train[0]
    assert image.shape == (1, 28, 28)
    assert image.dtype == torch.uint8
    assert isinstance(label, int)

    assert Counter(fashion_train.targets.tolist()) == {label: 6000 for label in range(10)}
    assert Counter(fashion_test.targets.tolist()) == {label: 1000 for label in range(10)}


def test_fashion_real_loaded_once(fashion_train):
    again = load_dataset("fashion-mnist", "train")
    assert again.images.data_ptr() == fashion_train.images.data_ptr()


def test_fashion_normalization_constants(fashion_test):
    transform = eval_transforms("fashion-mnist")
    images = torch.stack([transform(fashion_test[index][0]) for index in range(len(fashion_test))])
    assert images.shape == (10000, 1, 28, 28)
    assert images.dtype == torch.float32
    assert abs(images.mean().item()) < 0.02
    assert abs(images.std().item() - 1.0) < 0.02


# ---------------------------------------------------------------------------
# Fashion-MNIST files: formats and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "uncompressed"])
def test_fashion_idx_roundtrip(tmp_path, compress):
    images, labels = write_fake_fashion(tmp_path, count=20, compress=compress)

    dataset = load_dataset("fashion-mnist", "train", tmp_path)
    assert len(dataset) == 20
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(images))
    assert dataset.targets.tolist() == labels.tolist()


def test_fashion_torchvision_raw_folder(tmp_path):
    write_fake_fashion(tmp_path / "FashionMNIST" / "raw", count=10)
    assert len(load_dataset("fashion-mnist", "test", tmp_path)) == 10


def test_fashion_rewritten_file_reread(tmp_path):
    write_fake_fashion(tmp_path, count=10)
    assert len(load_dataset("fashion-mnist", "train", tmp_path)) == 10

    write_fake_fashion(tmp_path, count=30)
    assert len(load_dataset("fashion-mnist", "train", tmp_path)) == 30


def test_missing_dir_names_path_and_hint(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataNotFoundError) as raised:
        load_dataset("fashion-mnist", "train", missing)

    message = str(raised.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "fashion-mnist" in message


def test_missing_label_file_named(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))

    with pytest.raises(DataNotFoundError) as raised:
        load_dataset("fashion-mnist", "train", tmp_path)

    message = str(raised.value)
    assert "train-labels-idx1-ubyte" in message
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in message
    assert "apt-get install" in message


def _truncate_gzip(directory: Path) -> Path:
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:300])
    return path


def _garble_gzip(directory: Path) -> Path:
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data" * 10)
    return path


def _wrong_magic(directory: Path) -> Path:
    # A label file (one dimension) where the image file (three dimensions) belongs.
    path = directory / "train-images-idx3-ubyte.gz"
    write_idx(directory / "train-images-idx3-ubyte", np.zeros(20, dtype=np.uint8))
    return path


def _short_payload(directory: Path) -> Path:
    path = directory / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-28]))
    return path


def _label_count_mismatch(directory: Path) -> Path:
    write_idx(directory / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    return directory / "train-labels-idx1-ubyte.gz"


def _label_out_of_range(directory: Path) -> Path:
    write_idx(directory / "train-labels-idx1-ubyte", np.full(20, 10, dtype=np.uint8))
    return directory / "train-labels-idx1-ubyte.gz"


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (_truncate_gzip, "not a valid gzip file"),
        (_garble_gzip, "not a valid gzip file"),
        (_wrong_magic, "magic number 0x00000801, expected 0x00000803"),
        (_short_payload, "need 15680 bytes of data, but the file has 15652"),
        (_label_count_mismatch, "contains 20 images but"),
        (_label_out_of_range, "labels from 10 to 10"),
    ],
    ids=["truncated-gzip", "garbled-gzip", "wrong-magic", "short-payload", "label-count", "label-range"],
)
def test_malformed_fashion_file(tmp_path, corrupt, expected):
    write_fake_fashion(tmp_path, count=20)
    path = corrupt(tmp_path)

    with pytest.raises(DataFormatError) as raised:
        load_dataset("fashion-mnist", "train", tmp_path)

    message = str(raised.value)
    assert expected in message
    assert str(path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, DataNotFoundError)


def test_download_needs_data_dir():
    with pytest.raises(ValueError, match="writable data_dir"):
        load_dataset("fashion-mnist", "train", download=True)


def test_imagenet_download_rejected(tmp_path):
    with pytest.raises(ValueError, match="image-net.org"):
        load_dataset("imagenet", "train", tmp_path, download=True)


# ---------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------


def test_cifar10_fake_layout(tmp_path):
    first_batch = write_fake_cifar10(tmp_path, per_batch=4, test_count=6)

    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert len(train) == 20
    assert len(test) == 6
    assert train.classes[0] == "airplane"

    image, label = train[1]
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.uint8
    assert label == 2

    # Rows store the red plane, then green, then blue, each row-major.
    row = first_batch[1]
    assert int(image[0, 0, 0]) == int(row[0])
    assert int(image[1, 2, 3]) == int(row[1024 + 2 * 32 + 3])
    assert int(image[2, 31, 31]) == int(row[3071])

    assert train.targets.tolist()[:4] == [1, 2, 3, 4]


def test_cifar100_fake_bytes_keys(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.full((8, 3072), 7, dtype=np.uint8)
    write_cifar_batch(folder / "train", data, list(range(90, 98)), "fine_labels", bytes_keys=True)
    write_cifar_batch(folder / "test", data[:3], [0, 50, 99], "fine_labels", bytes_keys=True)

    train = load_dataset("cifar100", "train", tmp_path)
    assert train.targets.tolist() == list(range(90, 98))
    assert load_dataset("cifar100", "test", tmp_path).targets.tolist() == [0, 50, 99]

    normalized = train_transforms("cifar100", cutout=4)(train[0][0])
    assert normalized.shape == (3, 32, 32)
    assert normalized.dtype == torch.float32


def test_cifar_missing_names_folder(tmp_path):
    with pytest.raises(DataNotFoundError) as raised:
        load_dataset("cifar10", "train", tmp_path)

    message = str(raised.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "download=True" in message


def test_cifar_without_data_dir():
    with pytest.raises(DataNotFoundError, match="no data_dir"):
        load_dataset("cifar10", "train")


def test_cifar_garbled_pickle(tmp_path):
    write_fake_cifar10(tmp_path)
    broken = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    broken.write_bytes(broken.read_bytes()[:100])

    with pytest.raises(DataFormatError) as raised:
        load_dataset("cifar10", "train", tmp_path)
    assert str(broken) in str(raised.value)


# ---------------------------------------------------------------------------
# ImageNet folders
# ---------------------------------------------------------------------------


def test_imagenet_class_folders(tmp_path):
    write_image_tree(tmp_path, "train", ["n01", "n02"], per_class=3)
    write_image_tree(tmp_path, "val", ["n01", "n02"], per_class=2)

    train = load_dataset("imagenet", "train", tmp_path, transform=train_transforms("imagenet", cutout=16))
    test = load_dataset("imagenet", "test", tmp_path, transform=eval_transforms("imagenet"))
    assert len(train) == 6
    assert list(train.targets) == [0, 0, 0, 1, 1, 1]
    assert list(test.targets) == [0, 0, 1, 1]

    image, label = train[4]
    assert image.shape == (3, 224, 224)
    assert image.dtype == torch.float32
    assert label == 1

    image, _ = test[0]
    assert image.shape == (3, 224, 224)


def test_imagenet_missing_val(tmp_path):
    write_image_tree(tmp_path, "train", ["n01"], per_class=1)

    with pytest.raises(DataNotFoundError) as raised:
        load_dataset("imagenet", "test", tmp_path)
    assert str(tmp_path / "val") in str(raised.value)
    assert "image-net.org" in str(raised.value)


def test_imagenet_class_mismatch(tmp_path):
    write_image_tree(tmp_path, "train", ["n01", "n02"], per_class=1)
    write_image_tree(tmp_path, "val", ["n01", "n03"], per_class=1)

    with pytest.raises(DataFormatError, match="different class folders"):
        load_dataset("imagenet", "test", tmp_path)


# ---------------------------------------------------------------------------
# Stratified subsets and the search split
# ---------------------------------------------------------------------------


@pytest.fixture
def imbalanced_targets() -> np.ndarray:
    counts = {0: 500, 1: 300, 2: 150, 3: 50, 4: 7}
    labels = np.concatenate([np.full(count, label) for label, count in counts.items()])
    return np.random.default_rng(5).permutation(labels)


def test_stratified_subset_proportions(imbalanced_targets):
    total = len(imbalanced_targets)
    class_counts = Counter(imbalanced_targets.tolist())

    for size in (0, 1, 13, 200, 1006, total):
        indices = stratified_subset(imbalanced_targets, size, seed=3)
        assert len(indices) == size
        assert len(set(indices)) == size
        assert indices == sorted(indices)

        chosen = Counter(imbalanced_targets[indices].tolist())
        for label, count in class_counts.items():
            assert abs(chosen.get(label, 0) - size * count / total) < 1, (size, label)


def test_stratified_subset_deterministic(imbalanced_targets):
    first = stratified_subset(imbalanced_targets, 100, seed=11)
    assert stratified_subset(imbalanced_targets, 100, seed=11) == first
    assert stratified_subset(torch.from_numpy(imbalanced_targets), 100, seed=11) == first
    assert stratified_subset(imbalanced_targets.tolist(), 100, seed=11) == first
    assert stratified_subset(imbalanced_targets, 100, seed=12) != first


def test_stratified_subset_too_large():
    with pytest.raises(ValueError) as raised:
        stratified_subset([0, 1, 0, 1], 5, seed=0)
    assert "5" in str(raised.value)
    assert "4" in str(raised.value)


def test_search_split_disjoint_covering(imbalanced_targets):
    total = len(imbalanced_targets)
    weights, arch = search_split(imbalanced_targets, 0.7, seed=2)

    assert len(weights) == round(0.7 * total)
    assert set(weights).isdisjoint(arch)
    assert sorted(weights + arch) == list(range(total))

    for part, share in ((weights, 0.7), (arch, 0.3)):
        chosen = Counter(imbalanced_targets[part].tolist())
        for label, count in Counter(imbalanced_targets.tolist()).items():
            assert abs(chosen[label] - share * count) <= 1, (share, label)

    assert search_split(imbalanced_targets, 0.7, seed=2) == (weights, arch)


@pytest.mark.parametrize("portion", [0.0, 1.0, -0.5, 1.5])
def test_search_split_invalid_portion(portion):
    with pytest.raises(ValueError, match="portion"):
        search_split([0, 1, 0, 1], portion, seed=0)


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


def test_cutout_square_clipped():
    torch.manual_seed(0)
    image = torch.ones(3, 32, 32)
    cutout = Cutout(8)

    zero_counts = []
    ever_zeroed = torch.zeros(32, 32, dtype=torch.bool)
    for _ in range(1000):
        result = cutout(image)
        zeros = (result == 0).all(dim=0)
        ever_zeroed |= zeros
        rows = torch.nonzero(zeros.any(dim=1)).flatten()
        cols = torch.nonzero(zeros.any(dim=0)).flatten()
        count = int(zeros.sum())

        assert (result == 0).any(dim=0).equal(zeros)
        assert count == len(rows) * len(cols)
        assert len(rows) <= 8
        assert len(cols) <= 8
        zero_counts.append(count)

    assert torch.equal(image, torch.ones(3, 32, 32))
    assert max(zero_counts) == 64
    assert min(zero_counts) < 64
    assert ever_zeroed.all()


def test_random_crop_and_flip():
    image = torch.arange(28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).view(1, 28, 28)

    torch.manual_seed(0)
    crops = [RandomCropWithPadding(28, 2)(image) for _ in range(50)]
    assert all(crop.shape == (1, 28, 28) for crop in crops)
    assert any(not torch.equal(crop, image) for crop in crops)
    assert any(torch.equal(crop, image) for crop in crops)

    assert torch.equal(RandomHorizontalFlipTensor(p=1.0)(image), image.flip(-1))
    assert torch.equal(RandomHorizontalFlipTensor(p=0.0)(image), image)


def test_transforms_reproducible_with_seed(fashion_train):
    image = fashion_train[0][0]
    transform = train_transforms("fashion-mnist", cutout=6)

    torch.manual_seed(4)
    first = [transform(image) for _ in range(5)]
    torch.manual_seed(4)
    second = [transform(image) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def test_search_data_shapes_and_batches(fashion_train):
    generator = torch.Generator().manual_seed(0)
    data = build_search_data("fashion-mnist", None, 1000, 64, seed=0, generator=generator)

    assert data.spec is get_spec("fashion-mnist")
    assert len(data.train) == 500 // 64
    assert len(data.valid) == 500 // 64

    for loader in (data.train, data.valid):
        batches = list(loader)
        assert len(batches) == 7
        for images, labels in batches:
            assert images.shape == (64, 1, 28, 28)
            assert images.dtype == torch.float32
            assert labels.shape == (64,)
            assert labels.dtype == torch.int64

    weights = data.train.dataset.indices
    arch = data.valid.dataset.indices
    assert set(weights).isdisjoint(arch)
    assert len(set(weights) | set(arch)) == 1000
    assert Counter(fashion_train.targets[weights].tolist()) == {label: 50 for label in range(10)}


def test_search_data_reads_train_split_only(monkeypatch):
    requested = []
    real_load = datasets.load_dataset

    def spy(name, split, *args, **kwargs):
        requested.append(split)
        return real_load(name, split, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    data = build_search_data("fashion-mnist", None, 200, 16, seed=1)

    assert requested == ["train"]
    assert len(data.train.dataset.dataset) == 60000


def test_search_data_generator_resume():
    generator = torch.Generator().manual_seed(7)
    data = build_search_data("fashion-mnist", None, 400, 32, seed=0, generator=generator)

    state = generator.get_state()
    torch.manual_seed(0)
    first_images, first_labels = next(iter(data.train))

    generator.set_state(state)
    torch.manual_seed(0)
    again_images, again_labels = next(iter(data.train))

    assert torch.equal(first_labels, again_labels)
    assert torch.equal(first_images, again_images)

    next_images, next_labels = next(iter(data.train))
    assert not torch.equal(first_labels, next_labels)


def test_search_data_too_small_split():
    with pytest.raises(ValueError, match="batch_size=64"):
        build_search_data("fashion-mnist", None, 100, 64, seed=0)


def test_search_subset_larger_than_set(tmp_path):
    write_fake_fashion(tmp_path, count=20)
    with pytest.raises(ValueError) as raised:
        build_search_data("fashion-mnist", tmp_path, 21, 4, seed=0)
    assert "21" in str(raised.value)
    assert "20" in str(raised.value)


def test_train_data_shapes_and_batches(fashion_test):
    data = build_train_data("fashion-mnist", None, 640, 64, seed=0, cutout=8, test_subset=500)

    assert len(data.train) == 10
    assert len(data.test) == 8

    test_batches = list(data.test)
    assert [labels.shape[0] for _, labels in test_batches] == [64] * 7 + [52]
    assert test_batches[0][0].shape == (64, 1, 28, 28)

    again = torch.cat([labels for _, labels in data.test])
    assert torch.equal(torch.cat([labels for _, labels in test_batches]), again)

    test_indices = data.test.dataset.indices
    assert data.test.dataset.dataset.targets.shape == (10000,)
    assert Counter(fashion_test.targets[test_indices].tolist()) == {label: 50 for label in range(10)}

    images, labels = next(iter(data.train))
    assert images.shape == (64, 1, 28, 28)
    assert labels.shape == (64,)


def test_train_data_full_test_split():
    data = build_train_data("fashion-mnist", None, 128, 64, seed=0)
    assert len(data.test.dataset) == 10000
    assert len(data.train) == 2
