"""Running trained classifiers on images: ensembles, batch prediction, ONNX export."""
