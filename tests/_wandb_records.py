"""Read a W&B offline run file (`run-<id>.wandb`) back: its records as protobuf messages.

wandb 0.31 writes these from its Go core and no longer ships the Python reader (`wandb.sdk.internal.
datastore` is gone), so the tests read the format themselves: a 7-byte header (":W&B", magic 0xBEE1,
version), then LevelDB log framing (32 KiB blocks; each chunk a 4-byte checksum, 2-byte little-endian
length and 1-byte type: 1 full, 2 first, 3 middle, 4 last; block tails under 7 bytes are padding), each
record a serialised `wandb.proto.wandb_internal_pb2.Record`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = b":W&B" + struct.pack("<H", 0xBEE1)
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:6] == HEADER, f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # padding at the end of a block
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0 and length == 0:
            break  # the zero-filled rest of a file still being written
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    """Items keyed by `key`, or by `nested_key` (a path: an image's fields arrive one by one) as nested dicts."""
    result: dict = {}
    for item in items:
        *parents, leaf = [item.key] if item.key else list(item.nested_key)
        target = result
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = json.loads(item.value_json)
    return result


def offline_run(run_files: list[Path]) -> dict:
    """What the W&B run files hold together (one file per process that logged to the run): run ids,
    config, history rows (`_step` included), summary and the exit codes."""
    result = {"run_ids": [], "config": {}, "history": [], "summary": {}, "exit_codes": []}
    for path in run_files:
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                result["run_ids"].append(record.run.run_id)
                result["config"].update(_items(record.run.config.update))
            elif kind == "config":
                result["config"].update(_items(record.config.update))
            elif kind == "history":
                result["history"].append(_items(record.history.item))
            elif kind == "summary":
                result["summary"].update(_items(record.summary.update))
            elif kind == "exit":
                result["exit_codes"].append(record.exit.exit_code)
    return result
