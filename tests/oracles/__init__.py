"""Outside oracles run by the tests: the PI-CAI reference pipelines and an exact ONNX evaluation."""
