"""The original distribution files of the offline datasets: names, sizes, checksums, lookup.

Sizes and SHA-256 digests are those TFDS 4.9 records for its own downloads
(``tensorflow_datasets/url_checksums/{mnist,fashion_mnist,cifar10,cifar100}.txt``); the MD5
digests are the ones the authors publish (the MNIST page via its CVDF mirror, the Fashion-MNIST
README, the CIFAR page). The python versions of CIFAR are those torchvision and Keras verify.

A user's manual dir may hold the files directly or in a sub-folder named after the dataset
(``manual/mnist/train-images-idx3-ubyte.gz``), so one folder can serve several datasets.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

from jaxcnn.errors import DataError


@dataclasses.dataclass(frozen=True)
class ManualFile:
    """One original file: its name, size in bytes and digests (hex, lower case)."""

    name: str
    size: int
    md5: str
    sha256: str = ""


@dataclasses.dataclass(frozen=True)
class ManualSource:
    """The files a dataset is built from; ``variants`` are alternatives, the first preferred."""

    dataset: str
    homepage: str
    variants: tuple[tuple[ManualFile, ...], ...]
    variant_names: tuple[str, ...] = ("",)


def _mnist_style(dataset: str, homepage: str, table) -> ManualSource:
    return ManualSource(dataset, homepage, (tuple(ManualFile(*row) for row in table),))


MANUAL_SOURCES: dict[str, ManualSource] = {
    "mnist": _mnist_style("mnist", "http://yann.lecun.com/exdb/mnist/", [
        ("train-images-idx3-ubyte.gz", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", 28881, "d53e105ee54ea40749a09fcbcd1e9432",
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ("t10k-images-idx3-ubyte.gz", 1648877, "9fb629c4189551a2d022fa330f9573f3",
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", 4542, "ec29112dd5afa0611ce80d1b7f02629c",
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ]),
    "fashion_mnist": _mnist_style(
        "fashion_mnist", "https://github.com/zalandoresearch/fashion-mnist", [
            ("train-images-idx3-ubyte.gz", 26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("train-labels-idx1-ubyte.gz", 29515, "25c81989df183df01b3e8a0aad5dffbe",
             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("t10k-images-idx3-ubyte.gz", 4422102, "bef4ecab320f06d8554ea6380940ec79",
             "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("t10k-labels-idx1-ubyte.gz", 5148, "bb300cfdad3c16e7a12a480ee83cd310",
             "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ]),
    "cifar10": ManualSource("cifar10", "https://www.cs.toronto.edu/~kriz/cifar.html", (
        (ManualFile("cifar-10-binary.tar.gz", 170052171, "c32a1d4ab5d03f1284b67883e8d87530",
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
        (ManualFile("cifar-10-python.tar.gz", 170498071, "c58f30108f718f92721af3b95e74349a",
                    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    ), ("binary", "python")),
    "cifar100": ManualSource("cifar100", "https://www.cs.toronto.edu/~kriz/cifar.html", (
        (ManualFile("cifar-100-binary.tar.gz", 168513733, "03b5dce01913d631647c71ecec9e9cb8",
                    "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"),),
        (ManualFile("cifar-100-python.tar.gz", 169001437, "eb9058c3a382ffc7106e4002c42a8d85",
                    "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
    ), ("binary", "python")),
}


def candidate_dirs(dataset: str, manual_dir: str) -> list[str]:
    """The folders searched for ``dataset``'s files: ``manual_dir`` and ``manual_dir/dataset``."""
    base = os.path.abspath(os.path.expanduser(manual_dir))
    return [base, os.path.join(base, dataset)]


def locate(dataset: str, manual_dir: str) -> tuple[str, dict[str, str]]:
    """Finds a complete variant of ``dataset``'s files: ``(variant name, {file name: path})``.

    Raises a :class:`DataError` naming the missing files and where they were looked for.
    """
    source = MANUAL_SOURCES[dataset]
    dirs = candidate_dirs(dataset, manual_dir)
    for files, variant in zip(source.variants, source.variant_names):
        for folder in dirs:
            paths = {f.name: os.path.join(folder, f.name) for f in files}
            if all(os.path.isfile(p) for p in paths.values()):
                return variant, paths
    wanted = " or ".join(", ".join(f.name for f in files) for files in source.variants)
    present = {name for d in dirs if os.path.isdir(d) for name in os.listdir(d)}
    missing = [f.name for f in source.variants[0] if f.name not in present]
    raise DataError(
        f"dataset {dataset!r}: the manual dir {dirs[0]} lacks its original files "
        f"(missing {', '.join(missing)}; looked in {' and '.join(dirs)}). Put {wanted} from "
        f"{source.homepage} there, unchanged, or pass the folder that holds them as manual_dir "
        "(--manual-dir)")


def digests(path: str) -> tuple[str, str]:
    """``(md5, sha256)`` of a file, read once in 1 MiB blocks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def verify(dataset: str, path: str, expected: ManualFile) -> None:
    """Raises a :class:`DataError` unless ``path`` has ``expected``'s size and digests."""
    homepage = MANUAL_SOURCES[dataset].homepage if dataset in MANUAL_SOURCES else "its source"
    fix = f"download {expected.name} again from {homepage} and replace it"
    size = os.path.getsize(path)
    if size != expected.size:
        what = "truncated" if size < expected.size else "not the published file"
        raise DataError(f"dataset {dataset!r}: {path} has {size} bytes, expected "
                        f"{expected.size}; it is {what}: {fix}")
    md5, sha256 = digests(path)
    if md5 != expected.md5:
        raise DataError(f"dataset {dataset!r}: {path} has md5 {md5}, expected {expected.md5}; "
                        f"the file is corrupt or modified: {fix}")
    if expected.sha256 and sha256 != expected.sha256:
        raise DataError(f"dataset {dataset!r}: {path} has sha256 {sha256}, expected "
                        f"{expected.sha256}; the file is corrupt or modified: {fix}")


def locate_and_verify(dataset: str, manual_dir: str) -> tuple[str, dict[str, str]]:
    """:func:`locate` then :func:`verify` every file of the variant found."""
    variant, paths = locate(dataset, manual_dir)
    source = MANUAL_SOURCES[dataset]
    files = source.variants[source.variant_names.index(variant)]
    for f in files:
        verify(dataset, paths[f.name], f)
    return variant, paths
