"""The node's models: the registry of artifacts, one active and some in shadow, and the shadow runs' agreement."""
