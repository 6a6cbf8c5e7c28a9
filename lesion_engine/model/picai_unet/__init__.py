"""Imported PI-CAI baseline U-Net models: the network, its checkpoint import and its reference pipeline.

The PI-CAI challenge's semi-supervised baseline U-Net (``picai_baseline``, grand-challenge algorithm
``picai_unet_semi_supervised_gc_algorithm``) is a *detection-map model*: one network per fold, an ensemble
mean, and the lesion likelihood read from the map. This package runs such a model exactly as the authors'
pipeline does (the tests run that pipeline as the oracle).
"""
