"""benchmarks/device_check.py --dry: the GPU check's plan runs on the CPU at toy size, so it cannot rot."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_device_check_plan_runs_dry_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--dry", "--out", str(out),
                           "--skip", "fid"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    failed = [r["row"] for r in report["rows"] if r["status"] not in ("ok", "skipped")]
    assert not failed, failed
    for config in ("shapes", "shapes-gpu", "custom-gpu"):
        for precision in ("fp32", "bf16"):
            row = rows[f"train {config} {precision}"]
            assert row["steps"] == 2 and row["img_s"] > 0, row
    assert rows["sample cpu float32"]["bitwise"] is True  # the same device and precision: the same images
    assert rows["sample cpu --attention-maps"]["maps"] == 8
    assert rows["accelerate launch --num_processes 1"]["mixed_precision"] == "bf16"
    assert rows["resume (stop, --resume latest)"]["went_on_to"] == 2
    assert rows["fid"]["status"] == "skipped" and rows["suite"]["status"] == "skipped"
    # the printed table is the JSON's
    assert done.stdout.count("train custom-gpu bf16") == 2 and "17 rows, 0 failed" in done.stdout
