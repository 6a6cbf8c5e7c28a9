#!/usr/bin/env bash
# Start the lesion AI node. The Orthanc node itself arrives with the node issue; until then this prints
# what already works.
set -euo pipefail
cd "$(dirname "$0")/.."
cat <<'TXT'
The lesion AI node (Orthanc + plugin + workers) is not available yet in this version.
What works now (inside the virtual environment, .venv/bin/lesion-ai):

  .venv/bin/lesion-ai inspect DICOM_DIR [--json]     series table and chosen T2W/ADC/HBV roles of a study
  .venv/bin/lesion-ai synth --out DIR --cases N --seed S [--vendor ...] [--enhanced] [--compress ...]
                                                    synthetic bpMRI studies with ground truth

See README.md.
TXT
