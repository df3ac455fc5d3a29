"""Backbones, ImageNet weights and checkpoint formats."""
