"""Image and model analysis: entropy, masking, metrics, active learning, MAE reconstructions."""
