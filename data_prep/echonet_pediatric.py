"""Convert a downloaded EchoNet-Pediatric (A4C/ and PSAX/ folders, integer folds, X,Y tracings)
to the canonical echoflow layout: Videos/*.avi + FileList.csv (+ PatientID, View) [+ VolumeTracings.csv], square frames.

    python data_prep/echonet_pediatric.py --root DOWNLOAD --out DIR --size 112

Bad videos are skipped and listed with their reason; the output folder appears only when complete.
The logic lives in echoflow.data (convert_dataset); this is its command line."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoflow.data import convert_cli  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(convert_cli("pediatric"))
