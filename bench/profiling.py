"""Optional py-spy sampling of regcache during a bench phase (`run.py --profile`).

py-spy writes collapsed stacks (`--format raw`, one "frame;frame;frame count" per line, the
input of flamegraph.pl / speedscope); `hotspots()` sums them into the top functions by
self samples and by inclusive samples, which is what the report needs.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
from pathlib import Path


def pyspy_available() -> str | None:
    return None if shutil.which("py-spy") else "py-spy is not installed (pip install py-spy)"


class Recorder:
    """py-spy record attached to a pid (and its subprocesses) until stop()."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
             "--rate", str(rate), "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def stop(self) -> None:
        """SIGINT makes py-spy write its output and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "handle (regcache/web/blobs.py:42)"; keep function + file.
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def hotspots(collapsed: list[Path], top: int = 25) -> dict:
    """Top functions by self and inclusive share of all samples in the files."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    lines = [ln for f in collapsed if f.exists() for ln in f.read_text(errors="replace").splitlines()]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    pct = (lambda c: [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)]) if total else (lambda c: [])
    return {"samples": total, "self": pct(self_c), "inclusive": pct(incl_c)}
