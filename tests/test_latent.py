"""The encoding model: x_t = a_t E(x0) + b_t eps with a trainable E and decoder q(x0 | z).

With identity E and D it must be the pixel Gaussian process exactly (same losses, same samples
from the same seed); with token embeddings an oracle predictor must recover the tokens exactly;
both stages and the joint run train and sample through the console scripts.
"""

import pytest
import torch
from torch import nn

from udm.errors import UdmError
from udm.nets import ConvDecoder, ConvEncoder, IdentityCoder, TokenEmbedding, TokenHead, UNet
from udm.processes import Gaussian, Latent
from udm.samplers import DDIM, DDPM, DPMSolver

from .conftest import run_cli, run_main


def pair(**kw):
    return Gaussian(**kw), Latent(IdentityCoder(), IdentityCoder(), latent_weight=1.0, decoder_weight=0.0, **kw)


def test_identity_coders_reduce_to_the_pixel_process():
    kw = dict(T=100, schedule="linear", parametrization="eps", clip_denoised=True)
    gaussian, latent = pair(**kw)
    net = UNet(image_size=8, in_channels=1, channels=16, channel_mult=[1, 2], attention_resolutions=[4])
    for p in net.parameters():  # a net that does something (the U-Net starts at zero output)
        nn.init.normal_(p, std=0.05)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    losses = [p.training_loss(net, x0, torch.Generator().manual_seed(3)) for p in (gaussian, latent)]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for sampler in (DDIM(steps=10, eta=0.0), DDPM()):  # DDIM-10 and DDPM ancestral
        outs = []
        for p in (gaussian, latent):
            g = torch.Generator().manual_seed(7)
            outs.append(sampler(p, net, p.prior(x0, g), generator=g))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_latent_forward_inverse_and_shapes():
    latent = Latent(ConvEncoder(in_channels=1, channels=16, latent_channels=3, downsamples=2),
                    ConvDecoder(out_channels=1, channels=16, latent_channels=3, downsamples=2, image_size=28), T=50)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    z0 = latent.encode(x0)
    assert z0.shape == (4, 3, 7, 7)
    torch.testing.assert_close(z0.pow(2).mean(dim=(1, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)  # unit RMS code
    eps = latent.sample_noise(x0)
    assert eps.shape == z0.shape and latent.prior(x0).shape == z0.shape
    t = torch.tensor([1, 10, 30, 50])
    x_t = latent(x0, t, eps)
    torch.testing.assert_close(x_t, latent.latent.a[t].float().view(-1, 1, 1, 1) * z0 + latent.latent.b[t].float().view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(latent.inverse(x0, x_t, t), eps, atol=1e-4, rtol=0)
    assert latent(x0, torch.zeros(4, dtype=torch.long), eps) is x0  # x_0 = x0, in data space


class TokenOracle(nn.Module):
    """Predicts the code E(x0) of fixed tokens (x0 parametrization) whatever x_t is."""

    def __init__(self, embed: TokenEmbedding, tokens: torch.Tensor):
        super().__init__()
        self.embed, self.tokens = embed, tokens

    def forward(self, x_t, t):
        return self.embed(self.tokens).expand(x_t.shape[0], -1, -1)


def test_token_latent_with_an_oracle_recovers_the_text_exactly():
    V, d, L = 50, 16, 12
    embed = TokenEmbedding(V, d)
    head = TokenHead(V, d)
    with torch.no_grad():  # a head tied to the normalised table: argmax_j <e_i, e_j> = i
        head.head.weight.copy_(embed(torch.arange(V)))
        head.head.bias.zero_()
    latent = Latent(embed, head, T=200, parametrization="x0")
    tokens = torch.randint(0, V, (L,))
    oracle = TokenOracle(embed, tokens)
    g = torch.Generator().manual_seed(0)
    x_T = latent.prior(torch.zeros(5, L, dtype=torch.long), g)
    assert x_T.shape == (5, L, d)
    for sampler in (DDIM(steps=20), DDPM()):
        out = sampler(latent, oracle, x_T, generator=g)
        assert out.dtype == torch.long and torch.equal(out, tokens.expand(5, -1))
    # a perfect x0 prediction has zero latent loss; the head's cross-entropy is all that is left
    loss = latent.training_loss(oracle, tokens.expand(3, -1), torch.Generator().manual_seed(1))
    ce = head.nll(embed(tokens.expand(3, -1)), tokens.expand(3, -1))
    torch.testing.assert_close(loss, ce)


def test_joint_training_moves_encoder_decoder_and_net():
    latent = Latent(ConvEncoder(1, 8, 2, 1), ConvDecoder(1, 8, 2, 1, image_size=8), T=100)
    net = UNet(image_size=4, in_channels=2, channels=16, channel_mult=[1], attention_resolutions=[])
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    latent.training_loss(net, x0).backward()
    for module in (latent.encoder, latent.decoder, net):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), type(module).__name__


SMOKE = ["experiment=digits_smoke", "process=latent", "process.encoder.channels=8", "process.encoder.latent_channels=2",
         "process.encoder.downsamples=1", "net.image_size=4", "net.in_channels=2", "net.channel_mult=[1]",
         "net.attention_resolutions=[]", "net.patch_size=1", "trainer.max_steps=6", "trainer.val_check_interval=3",
         "val_samples=4", "final_samples=4"]


@pytest.mark.slow  # two trainings; the latent process is covered in-process by the rest of the file (the default suite stays under 10 minutes on 2 cores)
def test_two_stage_and_joint_training_through_the_console_scripts(tmp_path):
    ae, lat, joint = tmp_path / "ae", tmp_path / "latent", tmp_path / "joint"
    run_cli("udm-train", *SMOKE, "process.stage=autoencoder", "val_samples=0", "final_samples=0", f"hydra.run.dir={ae}", cwd=tmp_path)
    ae_ckpt = ae / "checkpoints" / "last.ckpt"
    run_cli("udm-train", *SMOKE, "process.stage=frozen", "process.latent_weight=1", "process.decoder_weight=0",
            f"process.autoencoder_ckpt={ae_ckpt}", f"hydra.run.dir={lat}", cwd=tmp_path)
    stage1, stage2 = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (ae, lat))
    coder = [k for k in stage1 if k.startswith(("process.encoder.", "process.decoder."))]
    for k in coder:  # frozen in stage 2 (up to the EMA's float rounding of a constant)
        torch.testing.assert_close(stage2[k], stage1[k], rtol=0, atol=1e-5)
    assert coder
    assert any(not torch.equal(stage1[k], stage2[k]) for k in stage2 if k.startswith("net."))  # the net trained
    # the stage-2 checkpoint carries E and D itself: sampling works after the stage-1 run is gone
    ae_ckpt.unlink()
    run_cli("udm-train", *SMOKE, f"hydra.run.dir={joint}", cwd=tmp_path)

    def udm_sample(run, *args):
        proc = run_cli("udm-sample", f"ckpt={run}", "n=6", "sampler.steps=5", *args, cwd=tmp_path)
        return torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True)

    for run in (lat, joint):
        samples = udm_sample(run)
        # decoded images, one per starting code: not the [6, 2, 4, 4] codes, and no two alike
        assert samples.shape == (6, 1, 8, 8) and samples.isfinite().all()
        assert all(not torch.equal(samples[i], samples[j]) for i in range(6) for j in range(i))
    other = udm_sample(joint, "seed=1")  # the seed picks the codes: every sample changes with it
    assert all(not torch.equal(a, b) for a, b in zip(samples, other))


def load_parts(latent):
    """What udm-train does with process.autoencoder_ckpt: it reads the checkpoint and hands E and D to the process."""
    from udm.checkpoint import load_checkpoint

    path = latent.parts_checkpoint()
    assert path and not latent.pretrained  # the process never reads the file itself
    latent.load_parts(load_checkpoint(path)["state_dict"], path)


def test_frozen_stage_refuses_missing_or_foreign_autoencoders(tmp_path):
    proc = run_main("udm-train", *SMOKE, "process.stage=frozen", f"hydra.run.dir={tmp_path / 'a'}")  # a refusal: in this process
    assert proc.returncode == 2 and "autoencoder_ckpt" in proc.stderr and "Traceback" not in proc.stderr
    pixel = tmp_path / "pixel.ckpt"  # a udm checkpoint of a pixel-space model: no encoder to read
    torch.save({"state_dict": {"net.w": torch.zeros(1)}, "udm": {"process": {"_target_": "udm.processes.Gaussian"}}}, pixel)
    coders = lambda: (ConvEncoder(1, 8, 2, 1), ConvDecoder(1, 8, 2, 1, image_size=8))  # noqa: E731
    with pytest.raises(UdmError, match="no encoder weights"):
        load_parts(Latent(*coders(), stage="frozen", autoencoder_ckpt=str(pixel)))
    other = tmp_path / "other.ckpt"  # a latent run with a different code size
    state = {f"process.{k}": v for k, v in Latent(ConvEncoder(1, 8, 3, 1), ConvDecoder(1, 8, 3, 1, image_size=8)).state_dict().items()}
    torch.save({"state_dict": state, "udm": {"process": {}}}, other)
    with pytest.raises(UdmError, match="does not fit this config's encoder"):
        load_parts(Latent(*coders(), stage="frozen", autoencoder_ckpt=str(other)))


@pytest.mark.slow  # a text training; token latents are covered in-process by the oracle test above
def test_text_through_gaussian_diffusion_of_embeddings(tmp_path):
    run = tmp_path / "run"
    run_cli("udm-train", "experiment=quatrain_latent", "net.hidden=32", "net.layers=1", "net.heads=2", "trainer.max_steps=3",
            "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "val_samples=2", "final_samples=2",
            f"hydra.run.dir={run}", cwd=tmp_path)
    assert len((run / "samples.txt").read_text(encoding="utf-8").splitlines()) == 2
    proc = run_cli("udm-generate", f"ckpt={run}", "n=3", "sampler=ddim", "sampler.steps=4", "metrics=false", cwd=tmp_path)
    texts = proc.stdout.split("udm-generate: texts written to ")[-1].strip()
    lines = open(texts, encoding="utf-8").read().splitlines()
    assert len(lines) == 3 and all(len(line) == 32 for line in lines)  # a quatrain: 28 characters + 4 marks
    proc = run_cli("udm-generate", f"ckpt={run}", "template='朝＿'", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "template infilling needs a token process" in proc.stderr


def test_stage_one_freezes_the_net_and_solvers_refuse_to_extrapolate_decoded_images():
    from udm.lit import DiffusionModule

    coders = lambda: (ConvEncoder(1, 8, 2, 1), ConvDecoder(1, 8, 2, 1, image_size=8))  # noqa: E731
    net = UNet(image_size=4, in_channels=2, channels=16, channel_mult=[1], attention_resolutions=[])
    DiffusionModule(Latent(*coders(), stage="autoencoder"), net, optimizer=torch.optim.AdamW)
    assert not any(p.requires_grad for p in net.parameters())  # DDP needs every trained parameter used
    assert not any(p.requires_grad for p in Latent(*coders(), decoder_weight=0.0).decoder.parameters())
    latent = Latent(*coders(), T=50)
    with pytest.raises(UdmError, match="DPM-Solver.*extrapolated linearly, which Latent.*re-encoded every step"):
        DPMSolver(steps=5)(latent, net, latent.prior(torch.zeros(2, 1, 8, 8)))
