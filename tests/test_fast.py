"""The sampling fast path (udm/fast.py): bf16 / channels_last / compile change the network call only, and its
outputs stay within stated tolerances of the plain float32 path.

Tolerances: one bf16 network call is within 2% (relative L2) of the float32 call (bf16 keeps 8 bits of
mantissa, ~0.4% per rounding); a whole DDIM run moves no pixel of a [-1, 1] sample by more than 0.1 and the
mean pixel by less than 0.02; argmax token sampling agrees on at least 95% of the tokens.
"""

import pytest
import torch

import udm.fast
from udm.fast import FastNet, describe_net, fast_net, resolve
from udm.nets import UNet
from udm.nets.transformer import Transformer
from udm.processes import Gaussian, TokenMask
from udm.samplers import DDIM

from .conftest import run_cli, train_in_process


def unet() -> UNet:
    """A small U-Net with every weight perturbed (its zero-initialized output layer would make every output 0)."""
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, channels=16, channel_mult=(1, 2), attention_resolutions=(4,)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("precision, channels_last, tol", [
    ("32-true", True, 1e-5), ("bf16-mixed", False, 2e-2), ("bf16-mixed", True, 2e-2), ("bf16-true", False, 2e-2),
])
def test_one_unet_call_matches_float32(precision, channels_last, tol):
    net = unet()
    x, t = torch.randn(8, 1, 8, 8), torch.randint(1, 50, (8,))
    with torch.no_grad():
        ref = net(x, t)
        fast = FastNet(net, "cpu", precision, channels_last)
        out = fast(x, t)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) < tol and (precision == "32-true" or rel_err(out, ref) > 0)
    # the caller's net is untouched: still float32, NCHW, same output
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.is_contiguous() for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(x, t), ref)


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_one_transformer_call_matches_float32(precision):
    torch.manual_seed(0)
    net = Transformer(vocab_size=30, length=12, hidden=64, layers=2, heads=2, dropout=0.0).eval()
    x, t = torch.randint(0, 30, (4, 12)), torch.randint(1, 12, (4,))
    with torch.no_grad():
        ref, out = net(x, t), FastNet(net, "cpu", precision, False)(x, t)
    assert out.dtype == torch.float32 and rel_err(out, ref) < 2e-2


def test_fast_ddim_and_ddpm_samples_stay_close_to_plain():
    process, net = Gaussian(T=50, schedule="cosine", parametrization="v"), unet()
    x_T = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fast = fast_net(net, "cpu", "bf16-mixed", True)
    for eta in (0.0, 1.0):
        runs = [DDIM(steps=10, eta=eta)(process, model, x_T, generator=torch.Generator().manual_seed(2)) for model in (net, fast)]
        gap = (runs[0] - runs[1]).abs()
        assert 0 < gap.max() < 0.1 and (runs[0].mean() - runs[1].mean()).abs() < 0.02


def test_fast_token_sampling_agrees_with_plain():
    torch.manual_seed(0)
    net = Transformer(vocab_size=40, length=16, hidden=64, layers=2, heads=2, dropout=0.0).eval()
    process = TokenMask(length=16, vocab_size=40, mask_id=39, temperature=0.0, order="confidence")
    x_T = process.prior(torch.zeros(32, 16, dtype=torch.long))
    plain, fast = (DDIM(steps=None)(process, m, x_T, generator=torch.Generator().manual_seed(0))
                   for m in (net, fast_net(net, "cpu", "bf16-mixed")))
    assert (plain == fast).float().mean() >= 0.95


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(udm.fast, "bf16_is_fast", lambda device: False)
    assert resolve("auto", "auto", torch.device("cpu")) == ("32-true", True)  # NHWC: oneDNN's fp32 convolutions
    assert resolve("auto", "auto", torch.device("cuda")) == ("32-true", False)
    assert fast_net(unet(), "cpu", channels_last=False).__class__ is UNet  # the plain path is the net itself, unwrapped
    monkeypatch.setattr(udm.fast, "bf16_is_fast", lambda device: True)
    assert resolve("auto", "auto", torch.device("cpu")) == ("bf16-mixed", False)
    assert resolve("auto", "auto", torch.device("cuda")) == ("bf16-mixed", False)
    assert resolve("bf16-true", True, torch.device("cpu")) == ("bf16-true", True)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve("fp8", "auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="channels_last must be true, false or auto"):
        resolve("auto", "yes", torch.device("cpu"))


def test_a_failing_compile_falls_back_to_eager(monkeypatch, capsys):
    def broken_compile(net, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\nlong trace ...")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    net = unet()
    fast = FastNet(net, "cpu", "32-true", False, compile=True)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(fast(x, t), net(x, t)) and torch.equal(fast(x, t), net(x, t))
    assert capsys.readouterr().out.count("torch.compile failed (InductorError: no working C++ compiler found)") == 1
    assert describe_net(fast) == "32-true"


@pytest.mark.slow
def test_compiled_net_matches_eager():
    net = unet()
    x, t = torch.randn(4, 1, 8, 8), torch.randint(1, 50, (4,))
    fast = FastNet(net, "cpu", "32-true", False, compile=True)
    with torch.no_grad():
        assert rel_err(fast(x, t), net(x, t)) < 1e-5
    assert describe_net(fast) == "32-true, compiled"


def test_udm_sample_plain_is_exact_and_default_is_close(tmp_path):
    run = tmp_path / "run"  # trained in this process: what is tested is udm-sample's fast= path
    train_in_process("experiment=digits_smoke", "trainer.max_steps=5", "trainer.val_check_interval=5", "val_samples=0",
                     "final_samples=0", f"hydra.run.dir={run}")
    outs = {}
    for fast in ("plain", "auto"):
        proc = run_cli("udm-sample", f"ckpt={run}", "n=8", "sampler.steps=10", f"fast={fast}", f"out_dir={tmp_path / fast}",
                       cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        outs[fast] = torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True)
        assert f"net in {resolve('auto', 'auto', torch.device('cpu'))[0] if fast == 'auto' else '32-true'}" in proc.stdout
    from udm.checkpoint import build_from_checkpoint, load_checkpoint

    process, net = build_from_checkpoint(load_checkpoint(run))
    generator = torch.Generator().manual_seed(0)
    x_T = process.prior(torch.zeros(8, 1, 8, 8), generator)
    assert torch.equal(outs["plain"], DDIM(steps=10)(process, net, x_T, generator=generator))
    gap = (outs["plain"] - outs["auto"]).abs()
    assert gap.max() < 0.1


@pytest.mark.slow  # two trainings; the sampling fast path is covered by test_udm_sample_plain_is_exact_and_default_is_close (the default suite stays under 10 minutes on 2 cores)
def test_training_fast_path_follows_the_plain_losses(tmp_path):
    """udm-train trainer.precision=bf16-mixed channels_last=true: the same batches give losses within 5% of float32's
    (the first is equal: the U-Net's output layer starts at zero) and its NHWC checkpoint samples on the plain path."""
    import csv

    def losses(name: str, *overrides: str) -> list[float]:
        run = tmp_path / name
        run_cli("udm-train", "experiment=digits_smoke", "trainer.max_steps=4", "trainer.val_check_interval=4", "val_samples=0",
                "final_samples=0", "trainer.log_every_n_steps=1", f"hydra.run.dir={run}", *overrides, cwd=tmp_path,
                env={"OMP_NUM_THREADS": "1"})
        with open(run / "csv" / "metrics.csv") as f:
            return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]

    plain, fast = losses("plain"), losses("fast", "trainer.precision=bf16-mixed", "channels_last=true")
    assert len(plain) == len(fast) == 4
    gaps = [abs(a - b) / a for a, b in zip(plain, fast)]
    assert gaps[0] < 1e-6 and 0 < max(gaps) < 0.05, gaps
    state = torch.load(tmp_path / "fast" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    kernels = [v for k, v in state.items() if k.startswith("net.") and v.dim() == 4 and v.shape[1] > 1 and v.shape[2] > 1]
    assert kernels and all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in kernels)
    proc = run_cli("udm-sample", f"ckpt={tmp_path / 'fast'}", "n=4", "sampler.steps=5", "fast=plain", cwd=tmp_path)
    samples = torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True)
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
