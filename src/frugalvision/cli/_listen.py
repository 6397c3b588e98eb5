"""What the commands that listen on a port (``serve``, ``explore``) share: ``--host``, ``--allowed-host`` and the
rule that turns them into the ``Host`` names the app answers to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = ["ANY_ADDRESS", "allowed_host_option", "allowed_hosts_for", "host_option"]

F = TypeVar("F", bound=Callable[..., Any])

#: The ``--host`` values that bind every interface.
ANY_ADDRESS = ("0.0.0.0", "::", "")


def host_option(f: F) -> F:
    """``--host ADDRESS`` (default 127.0.0.1: this machine only)."""
    return click.option(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (0.0.0.0: every interface; put a reverse proxy in front).",
    )(f)


def allowed_host_option(f: F) -> F:
    """``--allowed-host NAME`` (repeatable), passed as ``allowed_host``; see :func:`allowed_hosts_for`."""
    return click.option(
        "--allowed-host",
        "allowed_host",
        multiple=True,
        help="A name the Host header may carry (repeatable; '*': any). Default: localhost, 127.0.0.1, ::1 and "
        "--host. Other names get 400, so DNS rebinding cannot reach the service.",
    )(f)


def allowed_hosts_for(host: str, extra: Sequence[str], local: Sequence[str]) -> list[str]:
    """The ``Host`` names to accept: ``extra`` if given, else the ``local`` names plus the bound address.

    A service bound to every interface (``0.0.0.0`` / ``::``) still answers only to the local names unless
    ``--allowed-host`` lists the names clients use (``'*'``: any name; only behind a proxy that checks it).
    """
    if extra:
        return list(extra)
    return [*local, *([] if host in ANY_ADDRESS else [host])]
