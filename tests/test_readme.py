"""The README's commands and examples (and those of its guide pages in docs/), run as a user would run them (in a scratch folder, with the
shipped shapes64): every `cgan-sample` / `sample.py` line, every `cgan-train` / `train.py` line (a
training run as `--dry-run`: the same config, overrides and data checks, without the hours), the
data export and the Python API example. A command this file cannot run is named in NOT_RUN with the
reason; a README command that is in neither fails the test, so a new line cannot go untested by
accident. The README also stays at most README_MAX_LINES lines (issue 25), and every relative link of
the README and the guide pages leads to a file and heading that exist."""
from __future__ import annotations

import json
import re
import shlex
import warnings

from conftest import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 350
# The user's guide: the README and the pages its reference material moved to. Their commands are
# run (or named in NOT_RUN) exactly as the README's are.
GUIDE = [README, *(ROOT / "docs" / name for name in
                   ("generate.md", "training.md", "data.md", "evaluate.md", "how_it_works.md", "config.md"))]

# First words of the commands not run here, and why.
NOT_RUN = {
    ("python3", "-m", "venv"): "sets up a virtual environment (the tests already run in one)",
    (".",): "activates a virtual environment",
    ("pip", "install"): "installs packages; .ci/run installs the test extras on a fresh machine",
    ("apt-get",): "installs Debian packages (.ci/run)",
    ("(cd",): "downloads a Debian package (.ci/run)",
    ("python", "-m", "pytest"): "the suite itself",
    ("cgan-demo",): "serves until stopped; tests/test_demo.py serves the same page and drives its API",
    ("ACCELERATE_USE_CPU=true", "accelerate", "launch"): "2 processes: tests/test_train.py runs this launch",
    ("accelerate", "launch"): "needs GPUs, which the CI does not have",
    ("python", "-m", "cgan.fid"): "minutes of Inception features; tests/test_fid.py covers the command",
    ("python", "-m", "cgan.faithfulness"): "minutes of generation and reading; tests/test_faithfulness.py covers it",
    ("python", "-m", "cgan.diversity"): "minutes of generation; tests/test_diversity.py runs it at a small --num",
    ("python", "-m", "cgan.polish"): "10 minutes of fine-tuning; tests/test_polish.py runs it at 3 steps",
    ("python", "-m", "cgan.data", "prepare"): "needs Debian's emoji packages; tests/test_emoji.py covers it",
    ("python", "benchmarks/"): "benchmarks take minutes and print timings, not pass or fail",
    ("LD_PRELOAD=",): "an allocator A/B (a benchmark)",
    ("cgan-sample", "--model", "runs/emoji/model"): "needs the emoji run (Debian's emoji packages and hours)",
    ("cgan-train", "--config", "configs/emoji.yaml"): "reads data/emoji, which needs Debian's emoji packages",
}


def _code_blocks(language: str) -> list[str]:
    return [block for page in GUIDE
            for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)]


def readme_commands() -> list[list[str]]:
    """Every command of the README's bash blocks as argv lists: continuation lines joined, comments
    dropped, `a && b` split in two."""
    commands = []
    for block in _code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                commands.append(tokens[:cut])
                tokens = tokens[cut + 1:]
    return commands


def _not_run_reason(argv: list[str]) -> str | None:
    for prefix, reason in NOT_RUN.items():
        if len(argv) >= len(prefix) and all(a == p or (p.endswith(("/", "=")) and a.startswith(p))
                                            for a, p in zip(argv, prefix)):
            return reason
    return None


def _program(argv: list[str]) -> tuple[str | None, list[str]]:
    """('sample' | 'train' | 'data', its arguments) for a command this file runs, else (None, argv)."""
    if _not_run_reason(argv):
        return None, argv
    for names, kind in ((("cgan-sample",), "sample"), (("python", "sample.py"), "sample"),
                        (("cgan-train",), "train"), (("python", "train.py"), "train"),
                        (("python", "-m", "cgan.data"), "data")):
        if tuple(argv[:len(names)]) == names:
            return kind, argv[len(names):]
    return None, argv


def test_every_readme_command_is_run_or_named():
    commands = readme_commands()
    assert len(commands) > 30  # the parser found the blocks
    unknown = [" ".join(c) for c in commands if _program(c)[0] is None and _not_run_reason(c) is None]
    assert not unknown, f"README commands that tests/test_readme.py neither runs nor names in NOT_RUN: {unknown}"
    assert any(c[:1] == ["cgan-sample"] for c in commands) and any(c[:1] == ["cgan-train"] for c in commands)


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    from cgan.cli import sample_main, train_main
    from cgan.data.__main__ import main as data_main

    monkeypatch.chdir(tmp_path)  # a scratch folder that sees the checkout's configs, as a user's checkout does
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "prompts.jsonl").write_text('{"text": "a red circle", "style": "flat"}\n{"text": "a blue square"}\n')
    # "your own data": a small folder in the imagefolder form stands in for path/to/folder
    assert data_main(["export", "shapes", "--out", "path/to/folder", "--num", "24"]) == 0
    # training lines run as --dry-run and leave no model: a tiny untrained one stands in for runs/mine's
    from cgan.condition.attributes import AttributeSchema
    from cgan.data.shapes import SCHEMA
    from conftest import export_tiny_model

    export_tiny_model(tmp_path / "runs" / "mine" / "model", AttributeSchema.from_dict(SCHEMA))

    ran = []
    for argv in readme_commands():
        kind, args = _program(argv)
        if kind is None:
            continue
        if kind == "sample":
            code = sample_main(args)
        elif kind == "train":
            if "--print-config" not in args and "--dry-run" not in args:
                args = [*args, "--dry-run"]
            code = train_main(args)
        else:
            code = data_main(args)
        captured = capsys.readouterr()
        assert code == 0, f"README command failed: {' '.join(argv)}\n{captured.err[-2000:]}"
        ran.append(argv)
    assert len(ran) >= 20
    # what the generate lines promise
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "picked.jpg").is_file()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[:2] == ["seed000000.png", "seed000001.png"]
    assert (tmp_path / "attention" / "seed000000_attention.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "generated" / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in records[:2]] == ["00000_seed000000.png", "00000_seed000001.png"]
    assert len(records) == 8 and (tmp_path / "data" / "shapes_heldout" / "metadata.jsonl").is_file()


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    (example,) = [b for b in _code_blocks("python") if "CGANPipeline" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    out = namespace["out"]
    assert len(out.images) == 4 and (tmp_path / "first.png").is_file() and len(out.seeds) == 4
    # the demo's API example names exactly the endpoint's inputs (tests/test_demo.py calls them)
    (client,) = [b for b in _code_blocks("python") if "gradio_client" in b]
    from cgan.demo import api_parameter_names
    from cgan.pipeline import CGANPipeline

    names = re.findall(r"(\w+)=", client.split(".predict(", 1)[1])
    assert names[:-1] == api_parameter_names(CGANPipeline.from_pretrained("shapes64").schema)


def test_readme_unknown_word_warning_is_the_real_one():
    from cgan.pipeline import CGANPipeline

    (shown,) = [line for page in GUIDE for line in page.read_text().splitlines()
                if line.startswith("warning: prompt 'a pink")]
    pipe = CGANPipeline.from_pretrained("shapes64")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe("a pink hexagon")
    assert [f"warning: {w.message}" for w in caught] == [shown]


def test_readme_is_at_most_350_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; issue 25's bar is {README_MAX_LINES}: move reference material to docs/")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' comment in a code block is no heading
    return {_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_guide_links_lead_somewhere():
    pages = [*GUIDE, ROOT / "docs" / "speed.md", ROOT / "docs" / "recipe_study.md"]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_readme_contents_lists_every_section():
    text = README.read_text()
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {_anchor(h) for h in re.findall(r"^## (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)}
    assert sections - {"contents"} <= listed, sorted(sections - {"contents"} - listed)
    assert listed <= _anchors(README)
