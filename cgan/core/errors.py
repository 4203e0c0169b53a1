"""The one base class of the errors a user can fix (bad config, data, arguments, model folders), so
every command line answers them the same way: `error: <message>` on stderr and exit code 2, never a
traceback. An OSError on a user's path (permissions, a full disk) is answered the same way."""
from __future__ import annotations

import sys
import warnings
from typing import Callable


class CganError(Exception):
    """A problem with the user's input; the message names the file or argument and what was expected."""


class ConfigError(CganError, ValueError):
    """A config file or override names a key that does not exist or holds a bad value."""


class CheckpointError(CganError, RuntimeError):
    """A model folder or training state is missing, incomplete, corrupt or incompatible."""


# What every command line turns into a message: cgan's own errors, plain ValueErrors from argument
# checks, and OS errors on the user's paths.
USER_ERRORS: tuple[type[BaseException], ...] = (CganError, ValueError, OSError)


def plain_warnings() -> None:
    """Command lines show a warning as `warning: <message>`, without the source line Python adds."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


def run_cli(main: Callable[[], int]) -> int:
    """Run a command line's body; a user error becomes `error: ...` and exit code 2."""
    plain_warnings()
    try:
        return main()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
