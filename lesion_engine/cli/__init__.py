"""The ``lesion-ai`` command line: its entry point and the engine's own sub-commands (``inspect``, ``infer``)."""
