"""data=image_folder data.condition=label: one class per sub-folder (sorted names -> 0..K-1), labels split with
their images, class names in the recipe; condition=none reads the folder exactly as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udm.data import ArrayFile, ImageFolder
from udm.errors import UdmError

from .conftest import run_cli

# created out of order, so that only sorting gives ant=0, moth=1, zebra=2; class k's pixels are all LEVELS[k]
CLASSES = {"zebra": 2, "ant": 0, "moth": 1}
LEVELS = (40, 120, 200)


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for name, k in CLASSES.items():
        for i in range(4):
            write_png(root / name / f"{i}.png", LEVELS[k])
    write_png(root / "ant" / "nested" / "deep.png", LEVELS[0])  # deeper files belong to their top sub-folder
    return root


def classes_of(images: torch.Tensor) -> torch.Tensor:
    """The class each image was drawn as, read back off its (uniform) pixel level."""
    levels = ((images.mean((1, 2, 3)) + 1) / 2 * 255).round()
    return torch.stack([(levels - v).abs() for v in LEVELS], 1).argmin(1)


def folder_data(path: Path, **kwargs) -> ImageFolder:
    data = ImageFolder(path=str(path), image_size=8, channels=1, test_fraction=0.3, **kwargs)
    data.setup("fit")
    return data


def test_labels_follow_the_sorted_sub_folders_and_split_with_their_images(folder):
    data = folder_data(folder, condition="label")
    assert data.class_names == ["ant", "moth", "zebra"]
    assert len(data.train) + len(data.test) == 13 and len(data.test) == 4
    assert torch.equal(data.train_cond, classes_of(data.train)) and torch.equal(data.test_cond, classes_of(data.test))
    assert data.derived == {"num_classes": 3}
    assert data.recipe() == {"condition": {"kind": "label", "classes": 3, "names": ["ant", "moth", "zebra"]}}
    x, y = next(iter(data.train_dataloader()))
    assert torch.equal(y, classes_of(x))


def test_unlabelled_folders_load_as_before(folder):
    """condition=none: the sorted files, the seeded split, no labels; labelled data hold the same tensors."""
    write_png(folder / "loose.png", 255)  # allowed without labels
    files = sorted(p for p in folder.rglob("*") if p.suffix == ".png")
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32)) for f in files])
    images = (images / 255 * 2 - 1)[:, None]
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    n_test = round(len(files) * 0.3)
    data = folder_data(folder)
    assert torch.equal(data.train, images[order[n_test:]]) and torch.equal(data.test, images[order[:n_test]])
    assert data.train_cond is None and data.class_names is None and data.derived == {} and data.recipe() == {}
    (folder / "loose.png").unlink()
    plain, labelled = folder_data(folder), folder_data(folder, condition="label")
    assert torch.equal(plain.train, labelled.train) and torch.equal(plain.test, labelled.test)


def test_folders_that_are_not_one_sub_folder_per_class_are_refused(folder, tmp_path):
    write_png(folder / "stray.png", 0)
    write_png(folder / "other.png", 0)
    with pytest.raises(UdmError, match=r"2 image\(s\) lie directly in it: other.png, stray.png; move them"):
        folder_data(folder, condition="label")
    single = tmp_path / "single"
    for i in range(3):
        write_png(single / "only" / f"{i}.png", 0)
    with pytest.raises(UdmError, match=r"needs at least 2 classes .* found 1: \['only'\]"):
        folder_data(single, condition="label")
    with pytest.raises(UdmError, match="use data=image_folder data.path=DIR data.condition=label"):
        ArrayFile(path=str(tmp_path / "x.npy"), condition="label")


# covered by default: test_labels_follow_the_sorted_sub_folders_and_split_with_their_images (recipe), test_guidance::test_class_conditional_sampling_through_the_console_script
@pytest.mark.slow
def test_a_folder_trained_model_samples_its_classes_through_the_console_scripts(folder, tmp_path):
    run, one_thread = tmp_path / "run", {"OMP_NUM_THREADS": "1"}
    run_cli("udm-train", "experiment=digits_smoke", "data=image_folder", f"data.path={folder}", "data.image_size=8",
            "data.channels=1", "data.condition=label", "net.num_classes=???", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "val_samples=0", "final_samples=0", f"hydra.run.dir={run}",
            cwd=tmp_path, env=one_thread)
    recipe = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["udm"]
    assert recipe["condition"] == {"kind": "label", "classes": 3, "names": ["ant", "moth", "zebra"]}
    run_cli("udm-sample", f"ckpt={run}", "label=1", "n=2", "sampler.steps=2", "fast=plain", f"out_dir={tmp_path / 'out'}",
            cwd=tmp_path, env=one_thread)
    assert torch.load(next((tmp_path / "out").glob("*label1.pt"))).shape == (2, 1, 8, 8)
    bad = run_cli("udm-sample", f"ckpt={run}", "label=9", cwd=tmp_path, check=False, env=one_thread)
    assert bad.returncode == 2 and "label=9: this model knows the classes 0..2" in bad.stderr
