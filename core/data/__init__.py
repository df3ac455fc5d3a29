"""Images on disk: reading, the one folder walk, transforms, splits and the demo data set."""
