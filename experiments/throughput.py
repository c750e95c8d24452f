"""Training and sampling throughput of an experiment's net on this machine.

    python experiments/throughput.py experiment=mnist [batch=64] [repeats=5]

Times full training steps (the process's objective: forward, backward, AdamW step),
network evaluations and the real sampling loop with the experiment's sampler, medians over
`repeats` timed rounds after warm-up; prints a table and one JSON line. Works for every
image process, the encoding model included (its E and D are part of the training step and
of every reverse step).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from hydra.utils import instantiate

from udm.jobs.train import fill_from_data
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
    fill_from_data(cfg.net, {}, "net")  # an unconditional net: its condition keys (???) become null
    process, net = instantiate(cfg.process), instantiate(cfg.net)
    parameters = [p for module in (process, net) for p in module.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(parameters)
    sampler = instantiate(cfg.sampler)  # a udm.samplers object, called as sampler(process, net, x_T)
    x0 = torch.rand(batch, cfg.data.channels, cfg.data.image_size, cfg.data.image_size) * 2 - 1
    x_T = process.prior(x0)

    def train_step():
        loss = process.training_loss(net, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate():
        net(x_T, torch.full((batch,), process.T // 2))

    net.train(), process.train()
    train_rate = median_rate(train_step, batch, repeats)
    net.eval(), process.eval()
    eval_rate = median_rate(evaluate, batch, repeats)
    sample_rate = median_rate(lambda: sampler(process, net, x_T), batch, max(1, repeats // 2), iters=1)
    steps = len(sampler.timesteps(process))  # the network steps of the sampler's grid (steps, or T when null)
    result = {
        "overrides": overrides,
        "process": process.describe(),
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "process_params_M": round(sum(p.numel() for p in process.parameters()) / 1e6, 3),
        "batch": batch,
        "threads": torch.get_num_threads(),
        "train_images_per_s": round(train_rate, 1),
        "net_evals_images_per_s": round(eval_rate, 1),
        "sampling_images_per_s": round(sample_rate, 2),
        "sampling_steps": steps,
    }
    print(f"{'setting':<26}{'value':>12}")
    for k, v in result.items():
        print(f"{k:<26}{str(v):>12}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
