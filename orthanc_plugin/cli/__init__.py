"""The node's ``lesion-ai`` sub-commands: ``node``, ``worker``, ``send`` and ``models``."""
