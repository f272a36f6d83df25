"""The wire format, the one source shared by the car, the gateway and the verifier (docs/protocol.md).

``envelope``: the signed, hash-chained batch; ``columns``: names and types every payload uses;
``receipt``: the gateway's receipt and the transparency-log leaf; ``requests``: vehicle-signed requests.
This package depends only on ``cryptography`` and ``pyarrow`` so the offline verifier can use it.
"""

from carvault.protocol.columns import (
    CAMERA,
    CAMERA_COLUMNS,
    EVENT_KINDS,
    EVENT_META_KEY,
    REDACTION_KINDS,
    TIME_COLUMN,
    TIME_TYPE,
)
from carvault.protocol.envelope import (
    BATCH_KINDS,
    BATCH_MEDIA_TYPE,
    GENESIS_PREV,
    MAGIC,
    MAX_DECODED_BYTES,
    MAX_PAYLOAD_ROWS,
    PAYLOAD_FORMAT,
    SIGNATURE_LEN,
    VERSION,
    BatchHeader,
    Envelope,
    decode_envelope,
    decode_payload,
    encode_envelope,
    encode_payload,
    make_batch,
    payload_view,
    read_payload,
    sha256_hex,
)
from carvault.protocol.receipt import (
    LEAF_V1_PREFIX,
    LEAF_V2_PREFIX,
    LOG_KEY_LEN,
    leaf_data_v1,
    leaf_data_v2,
    leaf_salt,
    receipt_json,
)

__all__ = [
    "BATCH_KINDS",
    "BATCH_MEDIA_TYPE",
    "CAMERA",
    "CAMERA_COLUMNS",
    "EVENT_KINDS",
    "EVENT_META_KEY",
    "GENESIS_PREV",
    "MAGIC",
    "MAX_DECODED_BYTES",
    "MAX_PAYLOAD_ROWS",
    "PAYLOAD_FORMAT",
    "REDACTION_KINDS",
    "SIGNATURE_LEN",
    "TIME_COLUMN",
    "TIME_TYPE",
    "VERSION",
    "BatchHeader",
    "Envelope",
    "decode_envelope",
    "decode_payload",
    "encode_envelope",
    "encode_payload",
    "LEAF_V1_PREFIX",
    "LEAF_V2_PREFIX",
    "LOG_KEY_LEN",
    "leaf_data_v1",
    "leaf_data_v2",
    "leaf_salt",
    "make_batch",
    "payload_view",
    "read_payload",
    "receipt_json",
    "sha256_hex",
]
