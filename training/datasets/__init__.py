"""Training data: cases, PI-CAI layouts, synthetic sets, data sets built from a node, sampling and augmentation."""
