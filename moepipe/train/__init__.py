"""Training: losses, differentiable augmentation, weight averaging (the loop comes later)."""
