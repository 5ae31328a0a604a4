"""The GPU sampler script runs (on the CPU, at a toy size) and prints its whole table, so it is
ready when a GPU is: a check that it works, not a timing."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_samplers.py"


def test_gpu_sampler_script_prints_every_row():
    finished = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--preset", "tiny", "--dtype", "float32",
         "--length", "12", "--vocab", "40", "--batch", "1", "3", "--steps", "5", "20", "--torch-draw"],
        capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    # header, then per batch size first-hitting and two ancestral runs, with either draw
    assert len(rows) == 1 + 2 * 5
    assert all("| first_hitting | 12 |" in row for row in rows[1::5])
    assert sum("torch float64 draw" in row for row in rows) == 4
