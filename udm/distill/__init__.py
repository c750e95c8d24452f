"""Few-step generation by distillation, written once over x0_hat for every invertible process: progressive
distillation (udm.distill.progressive) and consistency distillation (udm.distill.consistency), trained by
udm.distill.module.DistillationModule (udm-train teacher=RUN distill=...), sampled as udm.distill.recipe says."""

from udm.distill.consistency import Consistency, consistency_loss
from udm.distill.progressive import Progressive, inverse_step, progressive_loss, teacher_target

__all__ = ["Consistency", "Progressive", "consistency_loss", "inverse_step", "progressive_loss", "teacher_target"]
