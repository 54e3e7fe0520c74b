"""The committed generated code (src/unstoppable/booking/booking_pb2.py and
.pyi) must be what the official protoc (grpcio-tools, pinned in the test
extra) makes from proto/booking.proto today."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "booking.proto"
GEN = ROOT / "src" / "unstoppable" / "booking"


def test_generated_code_matches_the_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) makes the generated code")
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                        f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", str(PROTO)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("booking_pb2.py", "booking_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (GEN / name).read_text()
        assert fresh == committed, (
            f"{name} is stale: regenerate with `python -m grpc_tools.protoc -Iproto "
            "--python_out=src/unstoppable/booking --pyi_out=src/unstoppable/booking proto/booking.proto`")


def test_the_oneof_holds_the_talks_three_inputs_and_the_outcomes():
    from unstoppable.booking.booking_pb2 import BookingEvent
    kinds = [f.name for f in BookingEvent.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert kinds[:3] == ["seat_reservation_requested", "payment_received", "reservation_expired"]
    assert {"seat_held", "reservation_rejected", "booking_confirmed", "hold_expired",
            "payment_refunded"} <= set(kinds)
    # Every event names its seat: that is what keys a seat's history to one partition.
    for f in BookingEvent.DESCRIPTOR.oneofs_by_name["kind"].fields:
        assert "seat_id" in f.message_type.fields_by_name, f.name
