"""The answer of every command line to the bad inputs of issue 13, part 3: input, message, exit code.

    python benchmarks/error_table.py [--model shapes64]

Each case runs the real command in a subprocess (in a temporary folder) and prints one Markdown row:
the first line of stderr that starts with `error:` or `warning`, the exit code, and whether a
traceback was printed. The tests (tests/test_cli_errors.py, test_sample_cli.py, test_config.py,
test_data.py) assert these; this script shows them side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_folder(folder: Path, rows: list[dict], bom: bool = False) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (200, 40 * i, 40)).save(folder / f"{i}.png")
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (folder / "metadata.jsonl").write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return folder


def cases(model: str, tmp: Path) -> list[tuple[str, list[str]]]:
    py, sample, train = sys.executable, str(ROOT / "sample.py"), str(ROOT / "train.py")
    tiny = str(ROOT / "configs" / "tiny.yaml")
    (tmp / "existing_folder").mkdir()
    rows = [{"file_name": f"{i}.png", "text": f"a mark {i}", "tone": "dark"} for i in range(3)]
    bom = write_folder(tmp / "bom", rows, bom=True)
    mixed = write_folder(tmp / "mixed", [{**r, "tone": 2 if i == 1 else "dark"} for i, r in enumerate(rows)])
    escape = write_folder(tmp / "escape", [{**rows[0], "file_name": "../outside.png"}, rows[1],
                                           {**rows[2], "file_name": "/etc/hostname"}])
    os.symlink("/etc/hostname", escape / "link.png")
    (escape / "metadata.jsonl").write_text((escape / "metadata.jsonl").read_text()
                                           + json.dumps({**rows[0], "file_name": "link.png"}) + "\n")
    run = ["--config", tiny, "--out", str(tmp / "run"), "--dry-run"]
    return [
        ("sample.py --out /proc/x.png", [py, sample, "--model", model, "--prompt", "a red circle", "--out", "/proc/x.png"]),
        ("sample.py --out EXISTING_FOLDER", [py, sample, "--model", model, "--prompt", "a red circle",
                                             "--out", str(tmp / "existing_folder")]),
        ("sample.py --seed 2**70", [py, sample, "--model", model, "--prompt", "a red circle", "--seed", str(2 ** 70)]),
        ("sample.py --num -1", [py, sample, "--model", model, "--prompt", "a red circle", "--num", "-1"]),
        ("sample.py --out x.bmpx", [py, sample, "--model", model, "--prompt", "a red circle", "--out", "x.bmpx"]),
        ("sample.py --device cuda (no GPU)", [py, sample, "--model", model, "--prompt", "a red circle",
                                              "--device", "cuda", "--out", str(tmp / "c.png")]),
        ("sample.py --prompt with emoji and Arabic", [py, sample, "--model", model, "--prompt", "a 🐱 مرحبا circle",
                                                      "--out", str(tmp / "w.png")]),
        ("train.py model.g_attn_resolutions=[x]", [py, train, *run, "model.g_attn_resolutions=[x]"]),
        ("train.py train.betas=[0.5]", [py, train, *run, "train.betas=[0.5]"]),
        ("train.py train.lr_g=-1", [py, train, *run, "train.lr_g=-1"]),
        ("train.py train.r1_gamma=-1", [py, train, *run, "train.r1_gamma=-1"]),
        ("train.py train.ema_kimg=-5", [py, train, *run, "train.ema_kimg=-5"]),
        ("train.py --dry-run train.augment=colour", [py, train, *run, "train.augment=colour"]),
        ("data check: BOM at the start of metadata.jsonl", [py, "-m", "cgan.data", "check", str(bom),
                                                            "--resolution", "32"]),
        ("train.py data.on_error=skip: a column of mixed types", [py, train, *run, "data.name=folder", f"data.path={mixed}",
                                                                  "data.on_error=skip", "data.resolution=32"]),
        ("data check: file_name with .., absolute, symlink out", [py, "-m", "cgan.data", "check", str(escape),
                                                                  "--resolution", "32"]),
        ("cgan.data export --out /proc/x (OS error)", [py, "-m", "cgan.data", "export", "shapes", "--out",
                                                       "/proc/cgan-x", "--num", "2"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes64", help="a model folder or a shipped model name")
    args = parser.parse_args()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    print("| input | message | exit code | traceback |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in cases(args.model, Path(tmp)):
            try:
                result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
            except subprocess.TimeoutExpired:
                print(f"| `{name}` | (no answer within 300 s) | - | - |", flush=True)
                continue
            lines = result.stderr.splitlines() + result.stdout.splitlines()
            said = [line.strip() for line in lines if line.startswith(("error:", "warning", "WARNING"))
                    or " valid records" in line or "metadata.jsonl:" in line]
            message = " / ".join(said or lines[-1:]).replace("|", "\\|")[:400]
            print(f"| `{name}` | {message} | {result.returncode} | {'yes' if 'Traceback' in result.stderr else 'no'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
