"""Classifier-free guidance on x0_hat for every process, condition dropout, and class-conditional data and nets."""

import pytest
import torch
import torch.nn.functional as F

from udm.conditioning import NULL_LABEL, drop_condition
from udm.errors import UdmError
from udm.nets import UNet
from udm.processes import Blur, Gaussian, TokenMask, TokenReplace, TokenUniform, VarianceExploding
from udm.samplers import DDIM, DDPM, DPMSolver, Guidance, Improved, Mixed, Sampler
from udm.samplers.loop import reverse_loop

from .conftest import compose_train, train_in_process


def two_branch(out_c, out_u):
    """model(x_t, t, cond): out_c for labelled rows, out_u for null ones (fixed outputs of B rows, taken row by row
    also when both branches come in one batched call of 2B rows)."""

    def model(x_t, t, cond):
        c, u = out_c(x_t, t), out_u(x_t, t)
        rows = torch.arange(len(x_t)) % len(c)
        c, u = c[rows], u[rows]
        keep = (cond != NULL_LABEL).view(-1, *[1] * (c.dim() - 1))
        return torch.where(keep, c, u)

    return model


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_real_valued_guidance_is_the_mix_of_the_two_predictions(w):
    process = Gaussian(T=50, parametrization="eps").double()
    g = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), torch.tensor([40, 20, 5])
    eps_c, eps_u = torch.randn_like(x_t), torch.randn_like(x_t)
    model = two_branch(lambda x, t: eps_c, lambda x, t: eps_u)
    guided = Guidance(w).x0_hat(process, model, x_t, t, torch.tensor([1, 4, 7]))
    x0_c, x0_u = process.x0_hat(eps_c, x_t, t), process.x0_hat(eps_u, x_t, t)
    expected = x0_u + w * (x0_c - x0_u)  # by hand
    torch.testing.assert_close(guided, expected, rtol=0, atol=1e-12)
    if w == 1.0:
        assert torch.equal(guided, x0_c)
    if w == 0.0:
        assert torch.equal(guided, x0_u)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_token_guidance_mixes_log_probabilities(w):
    process = TokenMask(length=5, vocab_size=7, mask_id=6, temperature=0.0)  # argmax: the mix decides the tokens
    g = torch.Generator().manual_seed(1)
    logits_c, logits_u = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    x_t = torch.full((2, 5), 6)
    model = two_branch(lambda x, t: logits_c, lambda x, t: logits_u)
    guided = Guidance(w).x0_hat(process, model, x_t, torch.tensor([5, 5]), torch.tensor([0, 2]))
    log_c, log_u = logits_c.log_softmax(-1), logits_u.log_softmax(-1)
    mixed = (log_u + w * (log_c - log_u))[..., :6]  # [MASK] (6) is never drawn
    assert torch.equal(guided.tokens, mixed.argmax(-1))
    if w == 1.0:
        assert torch.equal(guided.tokens, logits_c[..., :6].argmax(-1))


@pytest.mark.parametrize("process, make", [
    (Gaussian(T=40).double(), lambda g: DDPM(steps=10, guidance=g)),
    (VarianceExploding(T=20).double(), lambda g: DDIM(steps=7, guidance=g)),
    (Blur(T=8, std_max=4.0).double(), lambda g: Improved(guidance=g)),
])
@pytest.mark.parametrize("w", [0.0, 2.0, 5.0])
def test_an_oracle_for_every_condition_still_recovers_x0_under_any_scale(process, make, w):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) - 0.5

    def oracle(x_t, t, cond):  # x0_hat = x0 whatever the condition (null included; both branches come batched)
        x0_rows = x0[torch.arange(len(x_t)) % len(x0)]
        if isinstance(process, Blur):
            return x0_rows
        eps = process.inverse(x0_rows, x_t, t)
        return process.target(x0_rows, t, eps) if isinstance(process, Gaussian) else eps

    x_T = process(x0, torch.full((3,), process.T), process.sample_noise(x0, g))
    out = make(Guidance(w))(process, oracle, x_T, generator=g, cond=torch.tensor([0, 3, 9]))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_the_interval_applies_exactly_on_the_steps_inside_it():
    process = Gaussian(T=100)
    calls = []

    def model(x_t, t, cond):
        calls.append((int(t[0]), len(x_t)))  # a guided step is one batched call of both branches (2B rows)
        return torch.zeros_like(x_t)

    x_T = torch.randn(2, 1, 4, 4)
    DDIM(steps=10, guidance=Guidance(3.0, interval=(0.25, 0.6)))(process, model, x_T, cond=torch.tensor([1, 2]))
    guided = {t for t, rows in calls if rows == 4}
    assert [t for t, _ in calls] == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert guided == {60, 50, 40, 30}  # 0.25 <= t / T <= 0.6


def test_guidance_settings_are_checked():
    with pytest.raises(UdmError, match="guidance scale must be >= 0"):
        Guidance(-1.0)
    with pytest.raises(UdmError, match="guidance interval"):
        Guidance(2.0, interval=(0.7, 0.2))
    with pytest.raises(UdmError, match="guides toward a condition, but none was given"):
        DDIM(steps=2, guidance=Guidance(2.0))(Gaussian(T=10), lambda x, t: torch.zeros_like(x), torch.zeros(1, 2))


def test_autoguidance_takes_the_guide_model_for_the_weak_branch():
    process = Gaussian(T=30).double()
    x_t, t, cond = torch.randn(2, 3, dtype=torch.float64), torch.tensor([20, 10]), torch.tensor([0, 1])
    strong, weak = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    guided = Guidance(2.0, guide=lambda x, t, c: weak).x0_hat(process, lambda x, t, c: strong, x_t, t, cond)
    x0_s, x0_w = process.x0_hat(strong, x_t, t), process.x0_hat(weak, x_t, t)
    torch.testing.assert_close(guided, x0_w + 2.0 * (x0_s - x0_w), rtol=0, atol=1e-12)


def test_autoguidance_guides_an_unconditional_model_too():
    process = Gaussian(T=30).double()
    x_T = torch.randn(3, 2, dtype=torch.float64)
    strong, weak = (lambda x, t: 0.3 * x), (lambda x, t: -0.2 * x)  # eps-predictors
    seen = []
    DDIM(steps=2, guidance=Guidance(2.0, guide=weak, guide_conditional=False))(
        process, strong, x_T, callback=lambda step: seen.append(step.x0_hat))
    t = torch.full((3,), 30)
    x0_s, x0_w = process.x0_hat(strong(x_T, t), x_T, t), process.x0_hat(weak(x_T, t), x_T, t)
    torch.testing.assert_close(seen[0], x0_w + 2.0 * (x0_s - x0_w), rtol=0, atol=1e-12)


def test_a_cold_prior_degrades_held_out_images_of_the_requested_class(tmp_path):
    from omegaconf import OmegaConf

    from udm.jobs.conditions import prior_labels
    from udm.models import open_model

    run = tmp_path / "run"  # trained in this process: what is tested is the opened model's references
    train_in_process("experiment=digits_smoke", "process=blur", "data.condition=label", "trainer.max_steps=2",
                     "trainer.val_check_interval=2", "val_samples=0", "final_samples=0", f"hydra.run.dir={run}")
    model = open_model(run, "cpu")
    data = model.data("test")
    labels = torch.tensor([3, 3, 7, 0, 9, 7])
    refs = model.references(6, labels)
    index = [next(i for i in range(len(data.test)) if torch.equal(data.test[i], r)) for r in refs]
    assert data.test_cond[index].tolist() == labels.tolist()
    unlabelled = data.test[torch.randint(0, len(data.test), (6,), generator=torch.Generator().manual_seed(0))]
    assert torch.equal(model.references(6), unlabelled)  # without labels: the draw it always was
    cfg = OmegaConf.create({"class_prior": None})
    assert prior_labels(model, cfg, labels) is labels and prior_labels(model, OmegaConf.create({"class_prior": False}), labels) is None
    with pytest.raises(UdmError, match="class_prior .* does not apply here: no class is asked for"):
        prior_labels(model, OmegaConf.create({"class_prior": True}), None)


def test_condition_dropout_rate_is_the_configured_one():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(3))
    dropped = drop_condition(labels, 0.1, torch.Generator().manual_seed(4))
    rate = (dropped == NULL_LABEL).float().mean().item()
    assert abs(rate - 0.1) < 5 * (0.1 * 0.9 / 200_000) ** 0.5  # within 5 standard errors
    assert torch.equal(dropped[dropped != NULL_LABEL], labels[dropped != NULL_LABEL])
    assert drop_condition(None, 0.1) is None and torch.equal(drop_condition(labels, 0.0), labels)


def test_a_class_conditional_unet_embeds_labels_and_a_null_class():
    net = UNet(image_size=8, channels=8, channel_mult=[1], attention_resolutions=[], groups=4, num_classes=10)
    with torch.no_grad():  # the zero-initialised output convolutions would hide every difference
        for param in net.parameters():
            param.normal_(0, 0.2)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 5, 5])
    a, b = net(x, t, torch.tensor([1, 1, 1])), net(x, t, torch.tensor([2, 2, 2]))
    assert not torch.allclose(a, b)  # the label changes the prediction
    assert torch.equal(net(x, t, torch.full((3,), NULL_LABEL)), net(x, t))  # cond=None is the null class
    with pytest.raises(UdmError, match=r"class labels must lie in 0..9 \(or -1 for none\); got \[10\]"):
        net(x, t, torch.tensor([10, 10, 10]))


def test_labelled_digits_train_a_conditional_model(tmp_path):
    """data.condition=label gives (image, label) batches split as the images are; net.num_classes comes from the data."""
    from hydra.utils import instantiate

    from udm.jobs.train import train

    cfg = compose_train("experiment=digits_smoke", "data.condition=label", "net.num_classes=???", "trainer.max_steps=4",
                        "trainer.val_check_interval=2", "val_samples=0", "final_samples=0", f"out_dir={tmp_path}",
                        "~callbacks.progress")
    data = instantiate(cfg.data)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape[1:] == (1, 8, 8) and y.dtype == torch.long and data.derived == {"num_classes": 10}
    _, test_labels = data.labels()
    assert torch.equal(data.test_cond, test_labels)
    result = train(cfg)
    state = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    assert state["net.class_emb.weight"].shape == (11, 64)  # ten classes and the null one, time-embedding wide


def test_class_accuracy_scores_the_requested_classes():
    from omegaconf import OmegaConf

    from udm.metrics.base import Context
    from udm.metrics.class_accuracy import ClassAccuracy

    class MeanReader(torch.nn.Module):  # a "classifier" that reads the class off the image's mean
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            k = ((x.mean((1, 2, 3)) + 0.5) * 10).round().long().clamp(0, 9)
            return F.one_hot(k, 10).float()

    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3])
    samples = (labels.float() / 10 - 0.5).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()
    cfg = OmegaConf.create({"n": 12, "seed": 0, "batch_size": 5})
    context = Context(cfg, None, conditions=labels, shared={"extractor": (MeanReader(), {})})
    assert ClassAccuracy().compute(None, samples, context)["class_accuracy"] == 1.0
    context = Context(cfg, None, conditions=(labels + 1) % 10, shared={"extractor": (MeanReader(), {})})
    out = ClassAccuracy().compute(None, samples, context)
    assert out["class_accuracy"] == 0.0 and set(out["class_accuracy_per_class"]) == set(range(10))
    assert "labels=all" in ClassAccuracy().why_not(None, Context(cfg, None))


def test_label_requests_are_checked_against_the_checkpoint():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from udm.jobs.conditions import requested_labels, with_guidance

    def ask(condition, **keys):
        model = SimpleNamespace(condition=condition, checkpoint_path="run/last.ckpt", device="cpu")
        return requested_labels(model, OmegaConf.create({"label": None, "labels": None, "guidance": None, **keys}), 2)

    labelled = {"kind": "label", "classes": 10}
    assert ask(labelled) is None and ask(labelled, label=7).tolist() == [7, 7]
    assert ask(labelled, labels="all").tolist() == [k for k in range(10) for _ in range(2)]
    with pytest.raises(UdmError, match="was trained without class labels"):
        ask(None, label=3)
    with pytest.raises(UdmError, match=r"label=12: this model knows the classes 0..9"):
        ask(labelled, label=12)
    named = {"kind": "label", "classes": 3, "names": ["ant", "moth", "zebra"]}
    assert ask(named, label="moth").tolist() == [1, 1]
    with pytest.raises(UdmError, match="label='mouth' is not one this model knows; closest: moth"):
        ask(named, label="mouth")
    with pytest.raises(UdmError, match=r"trained with data.condition=title \(udm-generate title=...\)"):
        ask({"kind": "title", "length": 8}, labels="all")
    with pytest.raises(UdmError, match="give label=K .* with it"):
        ask(labelled, guidance=2.0)
    with pytest.raises(UdmError, match="forms no x0_hat to guide"):
        from udm.samplers import AnnealedLangevin

        with_guidance(AnnealedLangevin(), OmegaConf.create({"guidance": 2.0}))


def test_class_conditional_sampling_through_the_console_script(tmp_path):
    from .conftest import run_cli, run_main

    run = tmp_path / "run"  # trained in this process; the sampling below is the console script's
    train_in_process("experiment=digits_smoke", "data.condition=label", "net.num_classes=???", "trainer.max_steps=6",
                     "trainer.val_check_interval=3", "final_samples=0", f"hydra.run.dir={run}")
    proc = run_cli("udm-sample", f"ckpt={run}", "labels=all", "n=2", "guidance=2", "sampler.steps=4", "fast=plain",
                   f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    tensor = next((tmp_path / "out").glob("*labels-all-w2.pt"))
    samples = torch.load(tensor)
    assert samples.shape == (20, 1, 8, 8) and "labels-all-w2.png" in proc.stdout
    grid = next((tmp_path / "out").glob("*labels-all-w2.png"))
    from PIL import Image

    assert Image.open(grid).size == ((2 + 2 * 10) * 8, (2 + 10 * 10) * 8)  # 2 columns, one row per class, upscaled 8x
    bad = run_main("udm-sample", f"ckpt={run}", "label=12")
    assert bad.returncode == 2 and "label=12: this model knows the classes 0..9" in bad.stderr


# --- CFG++ (guidance_variant=cfg++): the guided x0_hat, the unconditional eps_hat --------------------------------


def affine_branches(shape, seed):
    """An affine fake eps-predictor with different conditional and unconditional outputs, and its two maps."""
    g = torch.Generator().manual_seed(seed)
    c, u = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)

    def eps_c(x, t):  # x holds B rows, or 2B when both branches come batched
        return 0.3 * x + c[torch.arange(len(x)) % len(c)]

    def eps_u(x, t):
        return -0.2 * x + u[torch.arange(len(x)) % len(u)]

    return two_branch(eps_c, eps_u), eps_c, eps_u


def first_step(sampler, process, model, x_T, cond):
    steps = []
    sampler(process, model, x_T, cond=cond, callback=steps.append)
    return steps[0]


@pytest.mark.parametrize("w", [0.0, 0.6, 1.0, 2.5])
def test_one_cfgpp_ddim_step_is_the_guided_x0_with_the_unconditional_eps(w):
    process = Gaussian(T=50, clip_denoised=False).double()
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model, eps_c, eps_u = affine_branches(x_T.shape, 6)
    cond = torch.tensor([1, 4, 7])
    step = first_step(DDIM(steps=2, guidance=Guidance(w, variant="cfg++")), process, model, x_T, cond)
    assert (step.t, step.s) == (50, 25) and torch.equal(step.x_t, x_T)  # the callback sees the real x_t
    abar = process.alphabar.double()
    a_t, b_t, a_s, b_s = abar[50].sqrt(), (1 - abar[50]).sqrt(), abar[25].sqrt(), (1 - abar[25]).sqrt()
    x0_c, x0_u = (x_T - b_t * eps_c(x_T, 50)) / a_t, (x_T - b_t * eps_u(x_T, 50)) / a_t
    x0_w = x0_u + w * (x0_c - x0_u)
    torch.testing.assert_close(step.x0_hat, x0_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(step.x_s, a_s * x0_w + b_s * eps_u(x_T, 50), rtol=0, atol=1e-12)  # by hand
    cfg = first_step(DDIM(steps=2, guidance=Guidance(w)), process, model, x_T, cond)  # CFG: x0_w's own eps_hat
    torch.testing.assert_close(cfg.x_s, a_s * x0_w + b_s * (x_T - a_t * x0_w) / b_t, rtol=0, atol=1e-12)
    if w != 0.0:  # at w = 0, x0_w = x0_u and both are the unconditional step
        assert not torch.allclose(cfg.x_s, step.x_s)


def test_cfgpp_at_w1_differs_from_cfg_only_through_eps_and_is_cfg_when_the_branches_agree():
    process = Gaussian(T=50, clip_denoised=False).double()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    model, _, _ = affine_branches(x_T.shape, 8)
    cond = torch.tensor([0, 3])
    plus = first_step(DDIM(steps=5, guidance=Guidance(1.0, variant="cfg++")), process, model, x_T, cond)
    cfg = first_step(DDIM(steps=5, guidance=Guidance(1.0)), process, model, x_T, cond)
    assert torch.equal(plus.x0_hat, cfg.x0_hat)  # the same x0_c ...
    assert not torch.allclose(plus.x_s, cfg.x_s)  # ... re-corrupted with eps_u instead of eps_c
    same = two_branch(lambda x, t: 0.3 * x + 1.0, lambda x, t: 0.3 * x + 1.0)  # one prediction for c and null
    for w in (1.0, 3.0):
        a, b = (DDPM(steps=5, guidance=Guidance(w, variant=v))(process, same, x_T, torch.Generator().manual_seed(1),
                                                                cond=cond) for v in ("cfg++", "cfg"))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # eps_u = eps_w up to the re-corruption's rounding


@pytest.mark.parametrize("process, make", [
    (Gaussian(T=40).double(), lambda g: DDPM(steps=10, guidance=g)),
    (Gaussian(T=40).double(), lambda g: DPMSolver(steps=6, guidance=g)),  # through the x0 extrapolation too
    (VarianceExploding(T=20).double(), lambda g: DDIM(steps=7, guidance=g)),
    (Blur(T=8, std_max=4.0).double(), lambda g: Improved(guidance=g)),
    (TokenMask(length=6, vocab_size=9, mask_id=8, temperature=0.0), lambda g: Improved(steps=3, guidance=g)),
    (TokenReplace(length=6, vocab_size=9, temperature=0.0), lambda g: Improved(guidance=g)),
    (TokenUniform(length=6, vocab_size=9, temperature=0.0), lambda g: Improved(steps=3, guidance=g)),
])
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_cfgpp_with_an_oracle_for_every_condition_still_recovers_x0(process, make, w):
    g = torch.Generator().manual_seed(2)
    tokens = isinstance(process, (TokenMask, TokenReplace, TokenUniform))
    if tokens:
        x0 = torch.randint(0, 8, (3, 6), generator=g)
    else:
        x0 = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) - 0.5

    def oracle(x_t, t, cond):
        x0_rows = x0[torch.arange(len(x_t)) % len(x0)]
        if tokens:
            return F.one_hot(x0_rows, process.vocab_size).float() * 30
        if isinstance(process, Blur):
            return x0_rows
        eps = process.inverse(x0_rows, x_t, t)
        return process.target(x0_rows, t, eps) if isinstance(process, Gaussian) else eps

    x_T = process(x0, torch.full((3,), process.T), process.sample_noise(x0, g))
    out = make(Guidance(w, variant="cfg++"))(process, oracle, x_T, generator=g, cond=torch.tensor([0, 3, 9]))
    if tokens:
        assert torch.equal(out, x0)
    else:
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_cfgpp_is_refused_where_there_is_no_eps_hat_to_replace():
    from omegaconf import OmegaConf

    from udm.jobs.conditions import with_guidance
    from udm.processes.capabilities import Capabilities
    from udm.samplers import Baseline, Naive

    plus = Guidance(2.0, variant="cfg++")
    with pytest.raises(UdmError, match=r"cfg\+\+ .* the Baseline step draws fresh noise instead \(sampler=naive\)"):
        Naive().guided(plus)
    with pytest.raises(UdmError, match=r"cfg\+\+ .* the Baseline step"):  # given at construction: refused at check time
        Naive(guidance=plus)(Gaussian(T=10), lambda x, t, c: x, torch.zeros(1, 2), cond=torch.tensor([1]))
    with pytest.raises(UdmError, match=r"cfg\+\+ .* the Baseline step"):
        with_guidance(Naive(), OmegaConf.create({"guidance": 2.0, "guidance_variant": "cfg++"}))

    class Opaque(Gaussian):  # no process in udm lacks an inverse; a Gaussian that declares none stands in
        capabilities = Capabilities(gaussian_noise=True)

    with pytest.raises(UdmError, match=r"cfg\+\+ .* needs an inverse .* Gaussian\(T=10.* does not have; use .*=cfg"):
        plus.check(Opaque(T=10))
    Guidance(2.0).check(Opaque(T=10), Baseline())  # plain CFG needs neither
    with pytest.raises(UdmError, match=r"guidance variant 'cfg\+' is not one of \['cfg', 'cfg\+\+'\]"):
        Guidance(2.0, variant="cfg+")
    with pytest.raises(UdmError, match="guidance_variant chooses how guidance re-corrupts: give guidance=w with it"):
        with_guidance(DDIM(), OmegaConf.create({"guidance": None, "guidance_variant": "cfg++"}))
    with pytest.raises(UdmError, match=r"guide \(autoguidance\) replaces the unconditional branch .*: give guidance=w"):
        with_guidance(DDIM(), OmegaConf.create({"guidance": None, "guide": "runs/early"}))


def test_an_unconditional_guide_is_called_without_the_condition():
    process = Gaussian(T=30).double()
    x_t, t, cond = torch.randn(2, 3, dtype=torch.float64), torch.tensor([20, 10]), torch.tensor([0, 1])
    strong, weak = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    guidance = Guidance(2.0, guide=lambda x, t: weak, guide_conditional=False)  # a two-argument (unconditional) net
    guided = guidance.x0_hat(process, lambda x, t, c: strong, x_t, t, cond)
    x0_s, x0_w = process.x0_hat(strong, x_t, t), process.x0_hat(weak, x_t, t)
    torch.testing.assert_close(guided, x0_w + 2.0 * (x0_s - x0_w), rtol=0, atol=1e-12)


def test_cfgpp_on_a_latent_process_with_identity_coders_is_cfgpp_on_pixels():
    """The encoding model re-corrupts with eps_u = (x_t - a_t E(x0_u)) / b_t: with E = D = identity, as on pixels."""
    from udm.nets import IdentityCoder
    from udm.processes import Latent

    kw = dict(T=50, schedule="linear", parametrization="eps", clip_denoised=False)
    gaussian = Gaussian(**kw).double()
    latent = Latent(IdentityCoder(), IdentityCoder(), decoder_weight=0.0, **kw).double()
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    model, _, _ = affine_branches(x_T.shape, 10)
    sampler = DDIM(steps=5, guidance=Guidance(2.0, variant="cfg++"))
    cond = torch.tensor([1, 2])
    outs = [sampler(p, model, x_T, torch.Generator().manual_seed(3), cond=cond) for p in (gaussian, latent)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)


def test_mean_pairwise_distance_by_hand():
    from udm.metrics.class_diversity import mean_pairwise_distance

    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert mean_pairwise_distance(points) == pytest.approx((5 + 4 + 3) / 3)


def test_guidance_in_the_sampler_config_is_named_and_not_doubled():
    from omegaconf import OmegaConf

    from udm.jobs.conditions import describe, with_guidance
    from udm.samplers import DDIM

    cfg = OmegaConf.create({"label": 3, "sampler": {"_target_": "udm.samplers.DDIM", "guidance": {
        "_target_": "udm.samplers.Guidance", "scale": 2, "interval": [0.1, 0.7]}}})
    assert describe(cfg) == "-label3-w2-in0.1-0.7"
    with pytest.raises(UdmError, match="already guides"):
        with_guidance(DDIM(steps=5, guidance=Guidance(2.0)), OmegaConf.create({"guidance": 3}))
