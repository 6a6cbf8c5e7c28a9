"""Imported PI-CAI baseline nnU-Net models (nnU-Net v1): restricted import, the network and nnU-Net's inference.

The PI-CAI challenge's semi-supervised nnU-Net baseline (grand-challenge algorithm
``picai_nnunet_semi_supervised_gc_algorithm``) is a *detection-map model*: five nnU-Net v1 folds, their mean
softmax, and the lesion likelihood read from the map. Its pickled checkpoints and plans are read only through
a restricted unpickler (:mod:`~lesion_engine.model.picai_nnunet.unpickle`); the network, nnU-Net's preprocessing,
sliding-window inference and export are reimplemented here step by step (:mod:`~.inference`), and the tests
run the authors' ``process.py`` with nnunet 1.7.0 as the oracle.
"""
