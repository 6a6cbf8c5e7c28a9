"""The node's base, below every other room: its settings, the typed Orthanc API, logging, the source offer and the release of orthanc-python's leaks."""
