"""benchmarks/recipe.py --report-only: the study's table and curves read from runs' metrics.jsonl, for shapes
and for a folder (caption and attribute accuracy, per-request diversity)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_run(run: Path, points: list[dict]) -> None:
    run.mkdir(parents=True)
    rows = []
    for k, metrics in enumerate(points, start=1):
        rows.append({"step": 250 * k, "images_seen": 8000 * k, "speed/images_per_s": 40.0})
        rows.append({"step": 250 * k, "images_seen": 8000 * k, **{f"metric/{m}": v for m, v in metrics.items()}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_of_folder_runs_shows_accuracy_and_diversity_curves(tmp_path):
    out = tmp_path / "study"
    write_run(out / "base-s0", [{"faithfulness/caption": 0.70, "faithfulness/group": 0.90, "diversity/ratio": 0.61},
                                {"faithfulness/caption": 0.80, "faithfulness/group": 0.95, "diversity/ratio": 0.55}])
    write_run(out / "div-s0", [{"faithfulness/caption": 0.65, "faithfulness/group": 0.85, "diversity/ratio": 0.84,
                                "precision": 0.3, "recall": 0.4}])
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipe.py"), "--base",
                           str(ROOT / "configs" / "custom.yaml"), "--set", f"data.path={tmp_path}", "--recipe", "base:",
                           "--recipe", "div: loss.diversity=4", "--out", str(out), "--report-only"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    curve = lines.index("diversity/ratio, against thousands of images seen")
    assert lines[curve + 1].split() == ["run", "8", "16"]
    assert lines[curve + 2].split() == ["base-s0", "0.610", "0.550"]
    assert lines[curve + 3].split() == ["div-s0", "0.840", "-"]
    last = next(line for line in lines if line.startswith("div-s0") and "0.300" in line)
    assert last.split()[:6] == ["div-s0", "0.650", "0.850", "0.840", "-", "0.300"]  # caption, group, ratio, fid, P
    summary = json.loads((out / "curves.json").read_text())
    assert summary["runs"]["base-s0"]["points"][1]["diversity/ratio"] == 0.55
    assert (out / "curves.png").stat().st_size > 0
