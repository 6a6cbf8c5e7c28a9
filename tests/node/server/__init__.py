"""Tests of the plugin in Orthanc: settings, launch, real servers, limits."""
