"""From trained weights to a model artifact: the export (weights and model.json, the card the engine reads) and
the Markdown card for people (MODEL_CARD.md).
"""
