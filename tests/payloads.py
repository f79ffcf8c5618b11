"""Files a writer of the artifact root could plant, each of which writes `marker` when read the
unsafe way: a bare pickle, a torch checkpoint (zip) for `torch.load(weights_only=False)`, and
Prefect result records, one through the pickle serializer and one through the JSON serializer's
object hook (which imports and builds any class the record names)."""

from __future__ import annotations

import pickle
from pathlib import Path


class _Exec:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _writes(marker: Path) -> _Exec:
    return _Exec(f"open({str(marker)!r}, 'a').write('pwned')")


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_writes(marker))


def torch_payload(marker: Path) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"module": _writes(marker)}, buffer)
    return buffer.getvalue()


def prefect_records(marker: Path, modules: Path) -> list[bytes]:
    """[pickle record, object-JSON record]; the second names a class in `modules` (a folder the
    reading process imports from) whose module writes the marker on import."""
    import json

    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer, PickleSerializer

    modules.mkdir(parents=True, exist_ok=True)
    (modules / "w2s_planted.py").write_text(f"open({str(marker)!r}, 'a').write('pwned')\nclass Thing(dict):\n    pass\n")
    pickled = ResultRecord(result=_writes(marker),
                           metadata=ResultRecordMetadata(storage_key="planted", serializer=PickleSerializer()))
    as_json = ResultRecord(result=None, metadata=ResultRecordMetadata(storage_key="planted", serializer=JSONSerializer()))
    record = json.loads(as_json.serialize())
    record["result"] = json.dumps({"__class__": "w2s_planted.Thing", "data": {}})
    return [pickled.serialize(), json.dumps(record).encode()]
