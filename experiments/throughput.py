"""Training and sampling throughput of an experiment's net on this machine.

    python experiments/throughput.py experiment=mnist [batch=64] [repeats=5]

Times full training steps (forward, backward, AdamW step) and network evaluations,
medians over `repeats` timed rounds after warm-up; prints a table and one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from hydra.utils import instantiate

from udm.cli import CONF_DIR


def median_rate(fn, batch: int, repeats: int, iters: int = 5) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        rates.append(batch * iters / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    opts = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("batch", "repeats"))
    overrides = [a for a in argv if a.split("=", 1)[0] not in ("batch", "repeats")]
    batch, repeats = int(opts.get("batch", 64)), int(opts.get("repeats", 5))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    torch.manual_seed(0)
    process, net = instantiate(cfg.process), instantiate(cfg.net)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    x0 = torch.rand(batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size) * 2 - 1

    def train_step():
        t = process.sample_t(batch)
        eps = process.sample_noise(x0)
        xt = process(x0, t, eps)
        loss = process.loss(net(xt, t), x0, xt, t, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate():
        net(x0, torch.full((batch,), process.T // 2))

    net.train()
    train_rate = median_rate(train_step, batch, repeats)
    net.eval()
    eval_rate = median_rate(evaluate, batch, repeats)
    steps = cfg.sampler.steps or process.T
    result = {
        "overrides": overrides,
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "batch": batch,
        "threads": torch.get_num_threads(),
        "train_images_per_s": round(train_rate, 1),
        "net_evals_images_per_s": round(eval_rate, 1),
        "sampling_images_per_s": round(eval_rate / steps, 2),
        "sampling_steps": steps,
    }
    print(f"{'setting':<26}{'value':>12}")
    for k, v in result.items():
        print(f"{k:<26}{str(v):>12}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
