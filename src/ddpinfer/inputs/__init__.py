"""Reading the inputs: which files ``data.path`` names, their records as rows, rank 0's
preflight scan with its content digests, image paths, and how many bad records a run may skip."""

from ddpinfer.inputs.bad_records import check_bad_share
from ddpinfer.inputs.files import SAMPLE_DATA
from ddpinfer.inputs.readers import FieldCheck, InputSpec, Row, open_spec
from ddpinfer.inputs.row_stream import RowStream
from ddpinfer.inputs.scan import InputScan

__all__ = [
    "SAMPLE_DATA",
    "FieldCheck",
    "InputScan",
    "InputSpec",
    "Row",
    "RowStream",
    "check_bad_share",
    "open_spec",
]
