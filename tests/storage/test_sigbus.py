"""Another process truncating a mapped segment must not kill a reader with
SIGBUS: the read fails with CorruptLogError instead."""
import subprocess
import sys
import textwrap

import unstoppable as us


def test_truncated_under_a_reader(tmp_path):
    d = tmp_path / "l"
    with us.Log(d) as log:
        p = log.create_topic("t", segment_bytes=1 << 20).partition(0)
        for i in range(200):
            p.append([b"%04d" % i + b"x" * 4000])
    # The reader runs in a child with faulthandler off, so a SIGBUS would kill it.
    code = textwrap.dedent(f"""
        import os, sys
        import unstoppable as us
        from unstoppable._core.segment import sigbus_absorbed
        from unstoppable.errors import CorruptLogError
        log = us.Log({str(d)!r})
        p = log.topic("t").partition(0)
        first = p.read(0, max_records=1)[0]
        assert bytes(first.value[:4]) == b"0000"
        seg = os.path.join(p.path, "00000000000000000000.log")
        os.truncate(seg, 8192)       # what a hostile or broken tool might do
        try:
            p.read(150, max_records=10)
            print("NO ERROR")
        except CorruptLogError as e:
            print("corrupt", e.segment == seg)
        print("absorbed", sigbus_absorbed() > 0)
        log._flusher.stop()
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-X", "faulthandler=0", "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr)
    assert out.stdout.split() == ["corrupt", "True", "absorbed", "True"], out.stdout
