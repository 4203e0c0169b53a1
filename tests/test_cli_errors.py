"""Every command line answers a user error (its own errors, bad arguments, an OS error on a path)
with `error: <message>` and exit code 2, never a traceback."""
import pytest

from cgan.core import errors
from cgan.condition.attributes import InvalidAttributeError
from cgan.batch import PromptsFileError
from cgan.core.errors import CheckpointError
from cgan.cli import sample_main, train_main
from cgan.core.config import ConfigError
from cgan.data.__main__ import main as data_main
from cgan.data.emoji import MissingPackageError
from cgan.data.folder import DataValidationError
from cgan.demo import main as demo_main
from cgan.faithfulness import main as faithfulness_main
from cgan.eval.fid import FIDError
from cgan.fid import main as fid_main


def test_user_errors_share_one_base_class():
    for error in (ConfigError, CheckpointError, DataValidationError, InvalidAttributeError, PromptsFileError,
                  FIDError, MissingPackageError):
        assert issubclass(error, errors.CganError), error


@pytest.mark.parametrize("main, argv, message", [
    (train_main, ["--config", "missing.yaml", "--out", "run"], "missing.yaml: config file not found"),
    (sample_main, ["--model", "missing", "--prompt", "a red circle"], "missing: model folder not found"),
    (fid_main, ["missing_a", "missing_b"], "missing_a: folder not found"),
    (faithfulness_main, ["--model", "missing"], "missing: model folder not found"),
    (data_main, ["check", "missing"], "missing: data folder not found"),
    (data_main, ["export", "shapes", "--out", "/proc/cgan-no", "--num", "2"], "--out: cannot write in '/proc'"),
    pytest.param(demo_main, ["--model", "missing"], "missing: model folder not found",
                 marks=pytest.mark.needs("gradio")),  # without Gradio the demo says so first
])
def test_every_command_line_answers_with_a_message(main, argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
