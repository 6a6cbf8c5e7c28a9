"""DICOM results that radiologists open in their viewers.

* :mod:`~lesion_engine.results.writer`: ``write_results`` (SEG with one segment per lesion, the TID 1500
  Comprehensive 3D SR, the KOS, and optionally a Parametric Map of the localization map and Secondary
  Capture overlays and summary) and ``write_failure`` (an SR and a Secondary Capture image saying that the
  AI did not analyse a study, and why);
* :mod:`~lesion_engine.results.settings`: what the writers are told (``ResultSettings``);
* :mod:`~lesion_engine.results.common`: what every object carries (equipment, model, dates, character
  set, source values cut to their VR) and the deterministic UIDs.

Every object copies the patient and study attributes of the source, names the product as equipment and
the AI model as Contributing Equipment, and has UIDs derived from the input series, the model's digest
and the settings, so re-processing a study gives the same objects. The package imports nothing itself, so
that its light modules (``outputs``, ``settings``) load without highdicom or SimpleITK.
"""
