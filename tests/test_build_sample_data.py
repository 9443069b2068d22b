"""scripts/build_sample_data.py's input checks: archives are pinned by sha256, and the one
pickled archive is read by an unpickler that can only rebuild a DataFrame."""

from __future__ import annotations

import io
import operator
import pickle
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import build_sample_data as build  # noqa: E402


def test_every_archive_is_pinned():
    assert set(build.ARCHIVE_SHA256) == set(build.ARCHIVES)
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in build.ARCHIVE_SHA256.values())


def test_an_archive_with_other_bytes_is_refused(tmp_path):
    _, _, filename = build.ARCHIVES["sentiment"]
    (tmp_path / filename).write_bytes(b"not the reviewed archive")  # as if cached, no download
    with pytest.raises(SystemExit, match="not the pinned"):
        build.fetch(tmp_path, "sentiment")


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "payload", [_Exploit(), operator.add, [slice(1), operator.mul]], ids=["reduce", "func", "mixed"]
)
def test_the_finefoods_unpickler_refuses_anything_but_a_frame(payload):
    data = pickle.dumps(payload)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        build.FrameUnpickler(io.BytesIO(data)).load()
