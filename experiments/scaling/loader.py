"""Images/s of udm's data loading alone, for the CIFAR-10 recipe's data, on this machine.

    python experiments/scaling/loader.py [--images 50000] [--batch 128] [--batches 200]

Writes a CIFAR-10 python batches folder of random pixels in the exact format (--images in all, a sixth of them
the test batch) to a temporary folder, then times, each as the median of three rounds:
* setup: reading and checking the batch files (the restricted unpickler) and converting them to floats, once per run;
* loader: the training DataLoader (shuffled, batch 128) with 0 and 2 worker processes, each batch then flipped
  as udm-train flips it (data.flip, on the batch after transfer), on the CPU;
* an image folder: decoding, resizing and centre-cropping PNG files (the per-image work of data=image_folder).
A GPU step of the 35.7M-parameter recipe takes a few hundred images/s to a few thousand; the loader must stay
far above that. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.cifar_files import write_cifar  # noqa: E402
from udm.data import CIFAR10, ImageFolder  # noqa: E402


class Training:
    training = True


def rate(fn, items: int, rounds: int = 3) -> float:
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return items / statistics.median(seconds)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--folder-images", type=int, default=1000)
    args = parser.parse_args()
    results: dict = {"images": args.images, "batch": args.batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder, _, _ = write_cifar(Path(tmp), per_batch=args.images // 6)

        def setup():
            CIFAR10(str(folder)).setup("fit")

        results["setup_images_per_s"] = rate(setup, args.images)
        data = CIFAR10(str(folder), batch_size=args.batch, flip=True)
        data.setup("fit")
        data.trainer = Training()
        for workers in (0, 2):
            data.num_workers = workers
            loader = data.train_dataloader()

            def epoch_part():
                for i, batch in enumerate(loader):
                    data.on_after_batch_transfer(batch, 0)
                    if i + 1 == args.batches:
                        break

            epoch_part()  # start the workers
            results[f"loader_{workers}_workers_images_per_s"] = rate(epoch_part, args.batches * args.batch)
        pictures = Path(tmp) / "pictures"
        pictures.mkdir()
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(args.folder_images):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(pictures / f"{i:05d}.png")
        results["image_folder_decode_images_per_s"] = rate(
            lambda: ImageFolder(str(pictures), image_size=32).load(), args.folder_images)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:,.0f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
