"""The public face: one flat `__all__`, every name real, every concept in a private module."""

from __future__ import annotations

import importlib
import pkgutil

import asyncsync


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
