"""MedSSL Studio engine: data, entropy, models, pretraining, fine-tuning, ensemble, jobs.

Nothing in this package may import Qt: the desktop front end is a thin view over it.
"""

__version__ = "0.1.0"
