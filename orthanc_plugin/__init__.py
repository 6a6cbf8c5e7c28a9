"""orthanc_plugin: the Orthanc glue of the lesion AI node (plugin script, job queue, workers)."""
