"""The scaling scripts run (on the CPU, at toy sizes): the GPU comparison's udm and diffusers nets are the same
size and arithmetic, and the loader benchmark reports every rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)}


def run_script(*args: str) -> dict:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a script for a GPU machine, checked here at toy size on the CPU (12 s)
def test_gpu_script_compares_same_sized_nets_on_the_cpu():
    pytest.importorskip("diffusers")
    result = run_script("experiments/scaling/gpu.py", "--device", "cpu", "--quick", "--variants", "fp32,fast",
                        "--train-steps", "0", "--no-write")
    assert result["params"]["udm"] == result["params"]["diffusers"] > 1e6  # the same architecture
    assert result["flops_per_image"]["udm"] == result["flops_per_image"]["diffusers"]
    rows = {(r["task"], r["impl"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(task, impl, v) for task in ("train", "sample") for impl in ("udm", "diffusers") for v in ("fp32", "fast")}
    assert all(r["images_per_s"] > 0 for r in rows.values())


@pytest.mark.slow  # a script that measures; its numbers are in the README (Scaling up)
def test_loader_benchmark_reports_every_rate():
    result = run_script("experiments/scaling/loader.py", "--images", "1200", "--batch", "32", "--batches", "5",
                        "--folder-images", "12")
    for key in ("setup_images_per_s", "loader_0_workers_images_per_s", "loader_2_workers_images_per_s",
                "image_folder_decode_images_per_s"):
        assert result[key] > 0
