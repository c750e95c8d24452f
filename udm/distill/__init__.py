"""Few-step generation by distillation, written once over x0_hat for every invertible process."""

from udm.distill.progressive import inverse_step, progressive_loss, teacher_target

__all__ = ["inverse_step", "progressive_loss", "teacher_target"]
