"""The kill soak, 3 kills: benchmarks/kill_soak.py interrupts a real training subprocess with SIGKILL."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_fmnist


@needs_fmnist
def test_three_kills_lose_nothing(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "kill_soak.py"
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(script), "--kills", "3", "--steps", "16", "--save-every", "2",
                        "--max-delay", "0.5", "--startup", "2", "--json", str(out)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["kills"] >= 1 and result["kills_during_save"] >= (1 if result["kills"] >= 2 else 0)
    assert result["corrupt_checkpoints"] == 0, result["events"]
    assert result["leftover_bytes"] == 0
    d = result["divergence"]
    assert d["tensors_differing"] == 0 and d["log_identical"] and d["steps"] == [16, 16], d
