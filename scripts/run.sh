#!/usr/bin/env bash
# Start the lesion AI node in the foreground: Orthanc with the lesion AI plugin, DICOMweb and the worker
# processes. All state lives in one data folder ($LESION_AI_HOME, default var/): Orthanc's index and
# storage, the job queue, the routing rules, the credentials and the logs. Ports: HTTP 8142 and DICOM 4342
# by default ($LESION_AI_HTTP_PORT, $LESION_AI_DICOM_PORT), apart from a system Orthanc on 8042/4242.
# See README.md ("The node").
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/lesion-ai node "$@"
