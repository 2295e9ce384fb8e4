"""The error hierarchy. Every error a user can see is a TurboctlError.

Each class has its own exit code so scripts can tell failures apart. The CLI prints
``error: <message>`` (one line), then the optional hint, log path and relevant log lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class TurboctlError(Exception):
    """Base class: a message for the user, an exit code and an optional fix."""

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        log_path: Path | None = None,
        details: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_path = log_path
        self.details = list(details)

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
            "log": str(self.log_path) if self.log_path else None,
            "details": self.details,
        }


class UsageError(TurboctlError):
    """The command line is wrong (bad option value, conflicting options)."""

    exit_code = 2


class ConfigError(TurboctlError):
    """A data file shipped with or given to turboctl is invalid (pins, series)."""

    exit_code = 3


class SourceError(TurboctlError):
    """The llama.cpp source could not be obtained or is not the pinned one."""

    exit_code = 4


class NetworkError(TurboctlError):
    """A remote (git server, PyPI) could not be reached."""

    exit_code = 5


class VerificationError(TurboctlError):
    """A checksum, commit id or built binary does not match what was expected."""

    exit_code = 6


class PatchError(TurboctlError):
    """The patch series could not be applied, or the tree is not ours to patch."""

    exit_code = 7


class BuildError(TurboctlError):
    """CMake configure or build failed."""

    exit_code = 8


class ToolMissing(TurboctlError):
    """A program turboctl needs is not installed."""

    exit_code = 9


class DoctorFailed(TurboctlError):
    """At least one required doctor check failed."""

    exit_code = 10


class CommandFailed(TurboctlError):
    """A helper command failed (generic; callers usually pass a more specific class)."""

    exit_code = 11


class GateRefused(TurboctlError):
    """This build may not serve the requested KV cache types on its backend (the binary does
    not accept them, or the backend self-test never ran, failed, or ran on another binary)."""

    exit_code = 12


class KVConfigError(TurboctlError):
    """The KV cache configuration cannot work with this model (a turbo type without flash
    attention, a head dim the turbo types do not support, MLA attention)."""

    exit_code = 13


class ModelError(TurboctlError):
    """The model file is missing or is not a readable GGUF file."""

    exit_code = 14


class BenchError(TurboctlError):
    """A benchmark run (llama-perplexity, llama-bench) failed or printed no usable result."""

    exit_code = 15


class SelftestFailed(TurboctlError):
    """The backend self-test ran and did not pass (or could not run to the end)."""

    exit_code = 16


class ProfileError(TurboctlError):
    """A serving profile (ours or the Hermes format) is invalid: the file, line and key are named."""

    exit_code = 17


class ProfileNotFound(TurboctlError):
    """No profile of that name on the search path (the closest names are suggested)."""

    exit_code = 18


class PortInUse(TurboctlError):
    """The address the server should listen on is already taken."""

    exit_code = 19


class DoesNotFit(TurboctlError):
    """The model plus its KV cache at the requested context does not fit this machine's memory budget."""

    exit_code = 20


class BinaryMissing(TurboctlError):
    """A llama.cpp program the command needs is not in the current build (or no build exists and
    building was refused)."""

    exit_code = 21


class ServerFailed(TurboctlError):
    """llama-server exited, never became healthy, or started something other than the plan."""

    exit_code = 22


class InsecureBind(TurboctlError):
    """Listening beyond loopback without an API key (and without the explicit opt-out flag)."""

    exit_code = 23


class ServiceError(TurboctlError):
    """The login service (launchd agent / systemd user unit) could not be written or queried."""

    exit_code = 24


class CorpusError(TurboctlError):
    """A text turboctl ships for its benchmarks (``corpora/``) is missing, changed (its sha256 is
    not the recorded one) or malformed."""

    exit_code = 25



class WorkerError(TurboctlError):
    """An RPC worker cannot be used: unreachable, another build (or a stock rpc-server), its
    self-test not passed, or it stopped while serving."""

    exit_code = 26


EXIT_INTERRUPTED = 130
