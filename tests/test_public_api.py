"""The public face: one flat `__all__`, every name real, every concept in a private module."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import asyncsync

#: the public face, spelled out: adding or dropping a name is a decision, made here too
EXPECTED = {
    # running an upload
    "Uploader",
    "upload",
    "RunSummary",
    "BatchResult",
    "UploadHooks",
    "RetryDetails",
    "RequestDone",
    "RunStarted",
    "InFlight",
    "QueueDepth",
    "CheckpointSaved",
    "TokenRequested",
    "TokenRefreshStarted",
    "TokenEvent",
    "HookGroup",
    # settings
    "BatchLimits",
    "RejectOptions",
    "RetryPolicy",
    "Action",
    "BodyOptions",
    "HttpOptions",
    "StateOptions",
    # authentication
    "AuthProvider",
    "OAuth2ClientCredentials",
    "JsonLogin",
    "StaticToken",
    "CallableProvider",
    "TokenResponse",
    "TokenManager",
    "Token",
    "TokenStore",
    "MemoryTokenStore",
    "FileTokenStore",
    "RedisTokenStore",
    # sources with options a path cannot carry, and the protocol for your own
    "Source",
    "JsonlSource",
    "CsvSource",
    # errors
    "AsyncSyncError",
    "ConfigError",
    "SourceError",
    "AuthError",
    "TransientAuthError",
    "DeliveryError",
    "CheckpointError",
    "Interrupted",
    "__version__",
}


def test_all_is_exactly_the_public_face() -> None:
    """__all__ is complete and exact: internals (Counters, RecordBlock, Fingerprint,
    CheckpointStore, ...) stay out, and every public name is in."""
    assert set(asyncsync.__all__) == EXPECTED


def test_import_loads_neither_the_cli_nor_sql() -> None:
    """``import asyncsync`` leaves out the CLI and the 1.2k-line SQL sources (and their
    drivers): a library user pays for neither."""
    code = (
        "import sys, asyncsync\n"
        "loaded = [m for m in sys.modules if m.startswith(('asyncsync.cli', "
        "'asyncsync.sources.sql', 'asyncpg', 'redis', 'asyncsync.sink'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_exist_and_are_unique() -> None:
    """Every name in __all__ is importable from the package, once."""
    assert len(asyncsync.__all__) == len(set(asyncsync.__all__))
    for name in asyncsync.__all__:
        assert hasattr(asyncsync, name), name


def test_public_objects_live_in_private_modules() -> None:
    """Classes and functions are defined in a private module (asyncsync._x or asyncsync.part._x)."""
    for name in asyncsync.__all__:
        obj = getattr(asyncsync, name)
        module = getattr(obj, "__module__", None)
        if module is not None and callable(obj):
            parts = module.split(".")
            assert parts[0] == "asyncsync", f"{name} is defined in {module}"
            assert parts[-1].startswith("_"), f"{name} is defined in {module}"


def test_exported_errors_form_one_tree() -> None:
    """Every exception asyncsync exports derives from AsyncSyncError."""
    errors = [
        getattr(asyncsync, n)
        for n in asyncsync.__all__
        if isinstance(getattr(asyncsync, n), type)
        and issubclass(getattr(asyncsync, n), BaseException)
    ]
    assert len(errors) >= 7
    assert all(issubclass(e, asyncsync.AsyncSyncError) for e in errors)


def test_every_module_imports() -> None:
    """No module of the package is broken (the CLI, the sink and the scale-out parts too)."""
    for info in pkgutil.walk_packages(asyncsync.__path__, "asyncsync."):
        importlib.import_module(info.name)
