"""From trained weights to a model artifact: the export and the model card."""
