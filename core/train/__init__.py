"""Supervised training: the shared training runtime, fine-tuning and k-fold cross-validation."""
