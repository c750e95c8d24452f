"""The knobs of the GPU path: compile modes (CUDA graphs only on CUDA, only with compile) and udm-train's compile,
which must leave checkpoints with the plain net's keys."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli
from udm.fast import FastNet, fast_net
from udm.nets import UNet


def test_compile_modes_are_refused_where_they_cannot_apply():
    net = UNet(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), attention_resolutions=())
    with pytest.raises(ValueError, match="compile_mode=reduce-overhead applies to a compiled net; set compile=true"):
        fast_net(net, "cpu", compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="records CUDA graphs, which need a CUDA device, not cpu"):
        fast_net(net, "cpu", compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="unknown compile_mode 'fastest'"):
        fast_net(net, "cpu", compile=True, compile_mode="fastest")
    wrapped = fast_net(net, "cpu", precision="32-true", channels_last=False, compile=True, compile_mode="max-autotune")
    assert isinstance(wrapped, FastNet) and wrapped.describe() == "32-true, compiled (max-autotune)"


@pytest.mark.slow  # torch.compile on the CPU takes minutes
def test_udm_train_compiled_writes_the_plain_nets_keys(tmp_path):
    for name, extra in (("eager", ()), ("compiled", ("compile=true",))):
        run_cli("udm-train", "experiment=digits_smoke", "trainer.max_steps=4", "trainer.val_check_interval=4",
                f"hydra.run.dir={tmp_path / name}", *extra, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    eager, compiled = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                       for n in ("eager", "compiled"))
    assert list(eager) == list(compiled)
    assert all(torch.allclose(eager[k].float(), compiled[k].float(), atol=1e-4) for k in eager)  # the same training
