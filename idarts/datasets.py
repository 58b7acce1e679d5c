"""Datasets, splits, transforms and data loaders for the search and for training.

Fashion-MNIST and CIFAR are read once into uint8 tensors of shape ``(N, C, H, W)``
and cached per file in this process. Their transforms are small tensor
operations, so no image goes through PIL. ImageNet is read from class folders
with ``torchvision.datasets.ImageFolder`` and transformed with torchvision.

Every random draw in this module comes from torch's global RNG, from a
``torch.Generator`` the caller passes, or from a NumPy generator built from an
explicit seed. With ``num_workers=0`` a run is reproducible from its seeds.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as tv_transforms
from torchvision.transforms import v2

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")

Transform = Callable[[Any], Any]


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    ``image_size`` is the native side length in pixels, which the networks are
    built for. ``mean`` and ``std`` are per-channel statistics of the training
    images scaled to [0, 1], used for normalization.
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_dir: str | None
    how_to_get: str


# The Fashion-MNIST statistics were computed from the 60,000 training images
# of the dataset-fashion-mnist package. The CIFAR and ImageNet statistics are
# the values the field commonly uses for those training sets.
DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        in_channels=1,
        num_classes=10,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        default_dir="/usr/share/datasets/fashion-mnist",
        how_to_get=(
            "Install it with `sudo apt-get install dataset-fashion-mnist`, which puts "
            "the IDX files in /usr/share/datasets/fashion-mnist, or download the four "
            "*-ubyte.gz files into a folder and pass --data-dir FOLDER (from Python, "
            "load_dataset(..., download=True) fetches them with torchvision)."
        ),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        in_channels=3,
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_dir=None,
        how_to_get=(
            "Download CIFAR-10 (python version) and pass --data-dir with the folder that "
            "contains cifar-10-batches-py; from Python, load_dataset(..., download=True) "
            "fetches it with torchvision."
        ),
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        in_channels=3,
        num_classes=100,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_dir=None,
        how_to_get=(
            "Download CIFAR-100 (python version) and pass --data-dir with the folder that "
            "contains cifar-100-python; from Python, load_dataset(..., download=True) "
            "fetches it with torchvision."
        ),
    ),
    "imagenet": DatasetSpec(
        name="imagenet",
        in_channels=3,
        num_classes=1000,
        image_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        default_dir=None,
        how_to_get=(
            "Download ILSVRC2012 from image-net.org and arrange it as "
            "data_dir/train/<class>/<image> and data_dir/val/<class>/<image>, with the "
            "validation images sorted into the same class folders as the training images."
        ),
    ),
}


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing. The message names the paths tried and the fix."""


class DataFormatError(DataNotFoundError, ValueError):
    """Raised when a dataset's files exist but are truncated, garbled or inconsistent.

    It subclasses DataNotFoundError, so one handler catches every unusable
    dataset, and ValueError, because the files have invalid contents.
    """


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name``, or raise ValueError listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}. Known datasets: {known}") from None


# ---------------------------------------------------------------------------
# In-memory datasets and the per-process cache of parsed files
# ---------------------------------------------------------------------------


class InMemoryImageDataset(Dataset):
    """Images held as one uint8 tensor of shape ``(N, C, H, W)`` with int64 labels.

    ``__getitem__`` returns ``(transform(image), label)``, where ``image`` is a
    uint8 ``(C, H, W)`` view into the shared tensor. Transforms must not modify
    it in place, because the cache shares it between datasets.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor of shape (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        if targets.shape != (images.shape[0],):
            raise ValueError(
                f"targets must have shape ({images.shape[0]},) to match the images, "
                f"got {tuple(targets.shape)}"
            )

        self.images = images
        self.targets = targets.to(torch.int64)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        self._labels: list[int] = self.targets.tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self._labels[index]


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int]:
    """Identify a file's contents by resolved path, modification time and size."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _cached(key: tuple, load: Callable[[], Any]) -> Any:
    """Return the cached value for ``key``, calling ``load`` on the first request."""
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]

        value = load()
        _CACHE[key] = value
        return value


def clear_cache() -> None:
    """Drop every parsed dataset held in this process (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------

_IDX_UBYTE = 0x08

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path, spec: DatasetSpec) -> bytes:
    """Read a file, decompressing it when its name ends in ``.gz``."""
    if path.suffix != ".gz":
        return path.read_bytes()

    try:
        with gzip.open(path, "rb") as stream:
            return stream.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFormatError(
            f"{spec.name}: {path} is not a valid gzip file ({error}), so it is "
            f"truncated or corrupted. Delete it and get the data again. {spec.how_to_get}"
        ) from error


def _parse_idx(data: bytes, path: Path, ndim: int, spec: DatasetSpec) -> np.ndarray:
    """Parse IDX bytes holding unsigned bytes in ``ndim`` dimensions into an array.

    The header is two zero bytes, a type code (0x08 for unsigned bytes), the
    number of dimensions, then each dimension as a big-endian uint32.
    """
    fix = f"Delete the file and get the data again. {spec.how_to_get}"
    expected_magic = (_IDX_UBYTE << 8) | ndim
    header_size = 4 + 4 * ndim

    if len(data) < header_size:
        raise DataFormatError(
            f"{spec.name}: {path} has {len(data)} bytes, fewer than the "
            f"{header_size}-byte IDX header. {fix}"
        )

    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DataFormatError(
            f"{spec.name}: {path} has IDX magic number 0x{magic:08X}, expected "
            f"0x{expected_magic:08X} (unsigned bytes, {ndim} dimensions). {fix}"
        )

    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected_bytes = math.prod(dims)
    found_bytes = len(data) - header_size
    if found_bytes != expected_bytes:
        raise DataFormatError(
            f"{spec.name}: {path} declares dimensions {dims}, which need "
            f"{expected_bytes} bytes of data, but the file has {found_bytes}. {fix}"
        )

    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def _find_first(candidates: Sequence[Path]) -> Path | None:
    for path in candidates:
        if path.is_file():
            return path
    return None


def _idx_candidates(directories: Sequence[Path], stem: str) -> list[Path]:
    """List the places an IDX file may be, compressed first."""
    return [directory / f"{stem}{suffix}" for directory in directories for suffix in (".gz", "")]


def _load_idx(path: Path, ndim: int, spec: DatasetSpec) -> torch.Tensor:
    """Parse one IDX file into a uint8 tensor, reusing the parse from earlier calls."""

    def load() -> torch.Tensor:
        data = _read_bytes(path, spec)
        array = _parse_idx(data, path, ndim, spec)
        return torch.from_numpy(array.copy())

    return _cached(("idx",) + _file_key(path), load)


def _load_fashion_mnist(spec: DatasetSpec, split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the images and labels of one Fashion-MNIST split from ``data_dir``.

    The files are looked up in ``data_dir`` and in ``data_dir/FashionMNIST/raw``,
    where torchvision's downloader puts them, as ``.gz`` or uncompressed.
    """
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"{spec.name}: data directory {data_dir} does not exist. {spec.how_to_get}"
        )

    directories = [data_dir, data_dir / "FashionMNIST" / "raw"]
    image_stem, label_stem = _FASHION_FILES[split]

    paths = []
    for stem in (image_stem, label_stem):
        candidates = _idx_candidates(directories, stem)
        path = _find_first(candidates)
        if path is None:
            tried = ", ".join(str(candidate) for candidate in candidates)
            raise DataNotFoundError(
                f"{spec.name}: {stem}[.gz] not found. Tried {tried}. {spec.how_to_get}"
            )
        paths.append(path)

    images = _load_idx(paths[0], 3, spec)
    labels = _load_idx(paths[1], 1, spec)

    size = spec.image_size
    if tuple(images.shape[1:]) != (size, size):
        raise DataFormatError(
            f"{spec.name}: {paths[0]} contains images of {tuple(images.shape[1:])} pixels, "
            f"expected ({size}, {size}). {spec.how_to_get}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{spec.name}: {paths[0]} contains {images.shape[0]} images but {paths[1]} "
            f"contains {labels.shape[0]} labels, so the files belong to different sets. "
            f"{spec.how_to_get}"
        )
    _check_label_range(labels, spec, paths[1])

    return images.unsqueeze(1), labels.to(torch.int64)


def _check_label_range(labels: torch.Tensor, spec: DatasetSpec, source: Path) -> None:
    if labels.numel() == 0:
        return

    low = int(labels.min())
    high = int(labels.max())
    if low < 0 or high >= spec.num_classes:
        raise DataFormatError(
            f"{spec.name}: {source} has labels from {low} to {high}, outside "
            f"0..{spec.num_classes - 1}. Delete the file and get the data again. "
            f"{spec.how_to_get}"
        )


# ---------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100 (torchvision's pickle layout)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{number}" for number in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        meta_file="batches.meta",
        names_key="label_names",
    ),
    "cifar100": _CifarLayout(
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        meta_file="meta",
        names_key="fine_label_names",
    ),
}


def _unpickle(path: Path, spec: DatasetSpec) -> dict[str, Any]:
    """Load one CIFAR pickle, turning bytes keys (from Python 2 pickles) into str.

    NOTE: unpickling runs code stored in the file, so load only files you trust.
    """
    try:
        with open(path, "rb") as stream:
            content = pickle.load(stream, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataFormatError(
            f"{spec.name}: {path} is not a readable pickle ({error}). Delete the folder "
            f"and get the data again. {spec.how_to_get}"
        ) from error

    if not isinstance(content, dict):
        raise DataFormatError(
            f"{spec.name}: {path} contains a {type(content).__name__}, expected a dict. "
            f"{spec.how_to_get}"
        )
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batch(path: Path, layout: _CifarLayout, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file into uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    batch = _unpickle(path, spec)

    missing = [key for key in ("data", layout.label_key) if key not in batch]
    if missing:
        raise DataFormatError(
            f"{spec.name}: {path} is missing the keys {missing}. Found {sorted(batch)}. "
            f"{spec.how_to_get}"
        )

    data = np.asarray(batch["data"])
    labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    pixels = spec.in_channels * spec.image_size * spec.image_size
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise DataFormatError(
            f"{spec.name}: {path} has data of dtype {data.dtype} and shape {data.shape}, "
            f"expected uint8 of shape (N, {pixels}). {spec.how_to_get}"
        )
    if labels.shape != (data.shape[0],):
        raise DataFormatError(
            f"{spec.name}: {path} has {data.shape[0]} images but labels of shape "
            f"{labels.shape}. {spec.how_to_get}"
        )

    # Each row stores the red plane, then green, then blue, each row-major.
    images = data.reshape(-1, spec.in_channels, spec.image_size, spec.image_size)
    return images, labels


def _load_cifar(spec: DatasetSpec, split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Read one CIFAR split from ``data_dir/<layout folder>`` (or ``data_dir`` itself)."""
    layout = _CIFAR_LAYOUTS[spec.name]
    file_names = layout.train_files if split == "train" else layout.test_files

    candidates = [data_dir / layout.folder, data_dir]
    folder = next(
        (candidate for candidate in candidates if all((candidate / name).is_file() for name in file_names)),
        None,
    )
    if folder is None:
        tried = ", ".join(str(candidate / name) for candidate in candidates for name in file_names)
        raise DataNotFoundError(
            f"{spec.name}: the {split} files were not found. Tried {tried}. {spec.how_to_get}"
        )

    paths = [folder / name for name in file_names]

    def load() -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        parts = [_read_cifar_batch(path, layout, spec) for path in paths]
        images = torch.from_numpy(np.concatenate([images for images, _ in parts]))
        labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        _check_label_range(labels, spec, folder)

        classes = None
        meta_path = folder / layout.meta_file
        if meta_path.is_file():
            classes = _unpickle(meta_path, spec).get(layout.names_key)
        return images, labels, classes

    key = ("cifar", spec.name) + tuple(_file_key(path) for path in paths)
    return _cached(key, load)


# ---------------------------------------------------------------------------
# ImageNet (class folders)
# ---------------------------------------------------------------------------


def _class_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _load_imagenet(spec: DatasetSpec, split: str, data_dir: Path, transform: Transform | None) -> tv_datasets.ImageFolder:
    """Open ``data_dir/train`` or ``data_dir/val`` as an ImageFolder of PIL images."""
    root = data_dir / ("train" if split == "train" else "val")
    if not root.is_dir():
        raise DataNotFoundError(
            f"{spec.name}: folder {root} for the {split} split does not exist. {spec.how_to_get}"
        )

    # Labels are indices into the sorted class names, so both splits must have
    # the same class folders or the test labels would mean other classes.
    other = data_dir / ("val" if split == "train" else "train")
    classes = _class_folders(root)
    if other.is_dir() and _class_folders(other) != classes:
        raise DataFormatError(
            f"{spec.name}: {root} and {other} have different class folders, so their labels "
            f"would not match. Give both the same class folders. {spec.how_to_get}"
        )
    if len(classes) > spec.num_classes:
        raise DataFormatError(
            f"{spec.name}: {root} has {len(classes)} class folders, more than the "
            f"{spec.num_classes} classes the networks are built for. {spec.how_to_get}"
        )
    if len(classes) < spec.num_classes:
        logger.warning(
            "%s: %s has %d class folders, but the networks still have %d outputs",
            spec.name, root, len(classes), spec.num_classes,
        )

    try:
        return tv_datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as error:
        raise DataNotFoundError(f"{spec.name}: {error}. {spec.how_to_get}") from error


# ---------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------


def _download(spec: DatasetSpec, split: str, data_dir: Path) -> None:
    """Fetch a dataset into ``data_dir`` with torchvision, which skips files already there.

    NOTE: this path needs internet access and is not exercised by the tests.
    """
    train = split == "train"
    downloaders = {
        "fashion-mnist": tv_datasets.FashionMNIST,
        "cifar10": tv_datasets.CIFAR10,
        "cifar100": tv_datasets.CIFAR100,
    }
    if spec.name not in downloaders:
        raise ValueError(
            f"{spec.name} cannot be downloaded automatically. {spec.how_to_get}"
        )

    logger.info("Downloading %s (%s split) into %s", spec.name, split, data_dir)
    try:
        downloaders[spec.name](root=str(data_dir), train=train, download=True)
    except (OSError, RuntimeError) as error:
        raise DataNotFoundError(
            f"{spec.name}: download into {data_dir} failed ({error}). {spec.how_to_get}"
        ) from error


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    transform: Transform | None = None,
    download: bool = False,
) -> Dataset:
    """Load one split of a dataset, where ``"test"`` is the official test (ImageNet: val) split.

    The returned dataset yields ``(transform(image), label)`` pairs and has a
    ``.targets`` attribute with the int labels of all items in order. Without a
    transform, Fashion-MNIST and CIFAR images are uint8 tensors of shape
    ``(C, H, W)`` and ImageNet images are PIL images.

    ``data_dir`` defaults to ``spec.default_dir``. With ``download=True`` the
    files are fetched into ``data_dir`` first, which then must be given.

    Raises ValueError for an unknown name or split, DataNotFoundError when the
    files are missing and DataFormatError when they are malformed.
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}. Use one of {', '.join(SPLITS)}")

    if download and data_dir is None:
        raise ValueError(
            f"download=True for {spec.name} needs a writable data_dir to download into"
        )
    if data_dir is None:
        data_dir = spec.default_dir
    if data_dir is None:
        raise DataNotFoundError(
            f"{spec.name}: no data_dir was given and this dataset has no default "
            f"location. {spec.how_to_get}"
        )
    data_dir = Path(data_dir).expanduser()

    if download:
        _download(spec, split, data_dir)

    started = time.perf_counter()
    if spec.name == "imagenet":
        dataset: Dataset = _load_imagenet(spec, split, data_dir, transform)
    elif spec.name == "fashion-mnist":
        images, labels = _load_fashion_mnist(spec, split, data_dir)
        dataset = InMemoryImageDataset(images, labels, transform)
    else:
        images, labels, classes = _load_cifar(spec, split, data_dir)
        dataset = InMemoryImageDataset(images, labels, transform, classes)

    logger.info(
        "Loaded %s %s split: %d images from %s in %.2f s",
        spec.name, split, len(dataset), data_dir, time.perf_counter() - started,
    )
    return dataset


# ---------------------------------------------------------------------------
# Stratified subsets and the search split
# ---------------------------------------------------------------------------


def _as_label_array(targets: Any) -> np.ndarray:
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    labels = np.asarray(targets)
    if labels.ndim != 1:
        raise ValueError(f"targets must be one-dimensional, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"targets must be integer labels, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def stratified_subset(targets: Sequence[int] | torch.Tensor | np.ndarray, size: int, seed: int) -> list[int]:
    """Pick ``size`` indices into ``targets`` that keep the class proportions.

    Each class gets the floor or the ceiling of its proportional share
    ``size * class_count / len(targets)``. The leftover slots go to the classes
    with the largest remainders, with ties broken at random. The members of each
    class are drawn at random. The same targets, size and seed give the same
    indices, returned sorted ascending.

    Raises ValueError when ``size`` is negative or larger than ``len(targets)``.
    """
    labels = _as_label_array(targets)
    total = labels.size
    if size < 0 or size > total:
        raise ValueError(
            f"subset size {size} is invalid for {total} items. Use a size from 0 to {total}"
        )

    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)

    # Integer arithmetic keeps the shares exact: size * count = quota * total + remainder.
    quotas = size * counts // total
    remainders = size * counts % total
    leftover = size - int(quotas.sum())
    tie_breakers = rng.permutation(classes.size)
    order = np.lexsort((tie_breakers, -remainders))
    quotas[order[:leftover]] += 1

    chosen = []
    for label, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.permutation(members)[:quota])

    return sorted(int(index) for index in np.concatenate(chosen))


def search_split(
    targets: Sequence[int] | torch.Tensor | np.ndarray, portion: float = 0.5, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split positions ``0..len(targets)-1`` into the weight half and the architecture half.

    The weight half gets ``round(portion * len(targets))`` items drawn with
    ``stratified_subset``, and the architecture half gets the rest. Both are sorted,
    disjoint, together cover every position, and keep the class proportions
    within one item per class.

    Raises ValueError unless ``0 < portion < 1``.
    """
    if not 0.0 < portion < 1.0:
        raise ValueError(f"portion must be between 0 and 1 (exclusive), got {portion}")

    labels = _as_label_array(targets)
    weight_indices = stratified_subset(labels, round(portion * labels.size), seed)

    in_weights = np.zeros(labels.size, dtype=bool)
    in_weights[weight_indices] = True
    arch_indices = np.flatnonzero(~in_weights).tolist()

    return weight_indices, arch_indices


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


class RandomCropWithPadding:
    """Zero-pad a ``(C, H, W)`` tensor by ``padding`` pixels per side, then crop ``size`` x ``size`` at random."""

    def __init__(self, size: int, padding: int) -> None:
        if size < 1 or padding < 0:
            raise ValueError(f"size must be >= 1 and padding >= 0, got size={size}, padding={padding}")
        self.size = size
        self.padding = padding

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        padded = F.pad(image, (padding, padding, padding, padding)) if padding else image

        height, width = padded.shape[-2:]
        if height < self.size or width < self.size:
            raise ValueError(
                f"cannot crop {self.size}x{self.size} from a padded image of {height}x{width}"
            )

        top = int(torch.randint(0, height - self.size + 1, ()))
        left = int(torch.randint(0, width - self.size + 1, ()))
        return padded[..., top : top + self.size, left : left + self.size]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


class RandomHorizontalFlipTensor:
    """Mirror a ``(..., H, W)`` tensor left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class ToNormalizedFloat:
    """Convert a uint8 ``(C, H, W)`` tensor to float32 ``(pixel / 255 - mean) / std`` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        std_tensor = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._scale = 1.0 / (255.0 * std_tensor)
        self._shift = -mean_tensor / std_tensor

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"ToNormalizedFloat expects a uint8 tensor, got {image.dtype}")
        return image.to(torch.float32).mul_(self._scale).add_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class Cutout:
    """Zero a ``size`` x ``size`` square of a ``(..., H, W)`` tensor at a random centre.

    The centre is uniform over all pixels and the square is clipped at the
    borders, so near an edge fewer than ``size * size`` pixels are zeroed.
    Applied after normalization, the zeroed square is set to the dataset mean.
    Returns a new tensor and leaves the input unchanged.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"cutout size must be >= 1 pixel, got {size}")
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        centre_y = int(torch.randint(0, height, ()))
        centre_x = int(torch.randint(0, width, ()))

        top = max(centre_y - self.size // 2, 0)
        bottom = min(centre_y - self.size // 2 + self.size, height)
        left = max(centre_x - self.size // 2, 0)
        right = min(centre_x - self.size // 2 + self.size, width)

        result = image.clone()
        result[..., top:bottom, left:right] = 0
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


# Zero padding per side for the random crop of the small datasets.
_CROP_PADDING = {"fashion-mnist": 2, "cifar10": 4, "cifar100": 4}


def train_transforms(name: str, cutout: int = 0) -> Transform:
    """Build the augmentation for training from scratch, with an optional Cutout of ``cutout`` pixels.

    Fashion-MNIST and CIFAR: random crop at native size after zero padding
    (2 pixels for Fashion-MNIST, 4 for CIFAR), horizontal flip, normalization.
    ImageNet: RandomResizedCrop 224, horizontal flip, ColorJitter(0.4, 0.4, 0.4,
    0.2), normalization. ``cutout=0`` disables Cutout.
    """
    spec = get_spec(name)
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0 pixels, got {cutout}")

    if spec.name == "imagenet":
        steps: list[Transform] = [
            v2.RandomResizedCrop(spec.image_size),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            v2.PILToTensor(),
        ]
    else:
        steps = [
            RandomCropWithPadding(spec.image_size, _CROP_PADDING[spec.name]),
            RandomHorizontalFlipTensor(),
        ]
    steps.append(ToNormalizedFloat(spec.mean, spec.std))

    if cutout:
        steps.append(Cutout(cutout))
    return tv_transforms.Compose(steps)


def search_transforms(name: str) -> Transform:
    """Build the augmentation used during the search: ``train_transforms(name)`` without Cutout."""
    return train_transforms(name, cutout=0)


def test_transforms(name: str) -> Transform:
    """Build the deterministic evaluation transform.

    Fashion-MNIST and CIFAR: normalization only. ImageNet: Resize 256, CenterCrop
    224, normalization.
    """
    spec = get_spec(name)

    steps: list[Transform] = []
    if spec.name == "imagenet":
        steps = [v2.Resize(256), v2.CenterCrop(spec.image_size), v2.PILToTensor()]
    steps.append(ToNormalizedFloat(spec.mean, spec.std))
    return tv_transforms.Compose(steps)


# Keep pytest from collecting test_transforms as a test when a test module imports it.
test_transforms.__test__ = False  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


@dataclass
class SearchData:
    """Loaders of the search: ``train`` updates the weights, ``valid`` updates the architecture."""

    train: DataLoader
    valid: DataLoader
    spec: DatasetSpec


@dataclass
class TrainData:
    """Loaders for training a found cell from scratch: augmented ``train`` and the official ``test`` split."""

    train: DataLoader
    test: DataLoader
    spec: DatasetSpec


def _subset_indices(targets: Any, subset: int | None, seed: int, purpose: str) -> list[int]:
    """Return all indices, or a stratified subset of ``subset`` of them."""
    total = len(targets)
    if subset is None:
        return list(range(total))

    if subset > total:
        raise ValueError(
            f"{purpose} subset of {subset} images is larger than the {total} images available. "
            f"Use a subset of at most {total} or None for all"
        )
    return stratified_subset(targets, subset, seed)


def _shuffled_loader(
    dataset: Dataset, indices: list[int], batch_size: int, num_workers: int, generator: torch.Generator | None
) -> DataLoader:
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        generator=generator,
    )


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def build_search_data(
    name: str,
    data_dir: str | os.PathLike | None,
    subset: int | None,
    batch_size: int,
    seed: int,
    train_portion: float = 0.5,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
) -> SearchData:
    """Build the two search loaders from the training split only.

    ``subset`` images (all when None) are first drawn with ``stratified_subset``,
    then split with ``search_split`` so that ``train_portion`` of them train the
    weights and the rest train the architecture. ``seed`` drives both draws.
    Both loaders use the search transforms, shuffle with ``generator`` (torch's
    global RNG when None) and drop the last incomplete batch, so every step gets
    ``batch_size`` images. The official test split is never read.

    Raises ValueError when either half has fewer than ``batch_size`` images.
    """
    spec = get_spec(name)
    _check_batch_size(batch_size)

    dataset = load_dataset(name, "train", data_dir, transform=search_transforms(name))
    targets = _as_label_array(dataset.targets)
    pool = _subset_indices(targets, subset, seed, "search")

    weight_positions, arch_positions = search_split(targets[pool], train_portion, seed)
    weight_indices = [pool[position] for position in weight_positions]
    arch_indices = [pool[position] for position in arch_positions]

    smaller = min(len(weight_indices), len(arch_indices))
    if smaller < batch_size:
        raise ValueError(
            f"the search split of {len(pool)} images with train_portion={train_portion} "
            f"leaves {smaller} images in one half, fewer than batch_size={batch_size}. "
            f"Use a larger subset or a smaller batch_size"
        )

    logger.info(
        "Search data for %s: %d images for the weights, %d for the architecture, batch size %d",
        spec.name, len(weight_indices), len(arch_indices), batch_size,
    )
    return SearchData(
        train=_shuffled_loader(dataset, weight_indices, batch_size, num_workers, generator),
        valid=_shuffled_loader(dataset, arch_indices, batch_size, num_workers, generator),
        spec=spec,
    )


def build_train_data(
    name: str,
    data_dir: str | os.PathLike | None,
    subset: int | None,
    batch_size: int,
    seed: int,
    cutout: int = 0,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    test_subset: int | None = None,
) -> TrainData:
    """Build the loaders for training a found cell from scratch.

    ``train`` reads the training split with ``train_transforms(name, cutout)``,
    optionally a stratified ``subset`` of it, shuffles with ``generator`` and
    drops the last incomplete batch. ``test`` reads the official test split
    with ``test_transforms(name)``, optionally a stratified ``test_subset`` of
    it, in a fixed order and keeps the last incomplete batch. ``seed`` drives
    both subsets.

    Raises ValueError when the training images number fewer than ``batch_size``.
    """
    spec = get_spec(name)
    _check_batch_size(batch_size)

    train_set = load_dataset(name, "train", data_dir, transform=train_transforms(name, cutout))
    train_indices = _subset_indices(train_set.targets, subset, seed, "training")
    if len(train_indices) < batch_size:
        raise ValueError(
            f"{len(train_indices)} training images are fewer than batch_size={batch_size}. "
            f"Use a larger subset or a smaller batch_size"
        )

    test_set = load_dataset(name, "test", data_dir, transform=test_transforms(name))
    test_indices = _subset_indices(test_set.targets, test_subset, seed, "test")

    logger.info(
        "Training data for %s: %d training images (cutout %d), %d test images, batch size %d",
        spec.name, len(train_indices), cutout, len(test_indices), batch_size,
    )
    return TrainData(
        train=_shuffled_loader(train_set, train_indices, batch_size, num_workers, generator),
        test=DataLoader(
            Subset(test_set, test_indices),
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=num_workers,
        ),
        spec=spec,
    )
