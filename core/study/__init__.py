"""Studies: the paper's protocol on a user's data (duplicate-aware folds, members, controls, ensembles) and its report."""
