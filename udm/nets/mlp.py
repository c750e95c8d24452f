"""An MLP x0-predictor for low-dimensional data (toy 2-D sets): time enters every hidden layer."""

from __future__ import annotations

from torch import Tensor, nn

from udm.nets.unet import timestep_embedding
from udm.nets.conditioning import refuse_condition


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, layers: int = 3):
        super().__init__()
        self.hidden = hidden
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, dim)
        self.act = nn.SiLU()

    uses_time = True  # the output depends on t (udm.samplers.OutputCache applies to nets that ignore it)

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        refuse_condition(self, cond)
        emb = self.time(timestep_embedding(t, self.hidden))
        h = self.inp(x_t)
        for block in self.blocks:
            h = h + block(self.act(h + emb))
        return self.out(self.act(h))
