"""``frugalvision serve``: what it hands to uvicorn (bind address, timeouts, connection cap, Host list, token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import frugalvision.cli.serve  # noqa: F401  (registers the command)
from frugalvision.cli.main import cli
from helpers import make_bundle


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs ``frugalvision serve`` with ``uvicorn.run`` replaced; returns (app, uvicorn kwargs, CLI result)."""
    import uvicorn

    make_bundle(tmp_path / "m")
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv("FRUGALVISION_TOKEN", raising=False)

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[Any, dict[str, Any], Any]:
        calls.clear()
        result = CliRunner().invoke(cli, ["serve", str(tmp_path / "m"), *args], env=env)
        assert result.exit_code == 0 or not calls, result.output
        return (*calls[0], result) if calls else (None, {}, result)

    return start


def test_defaults_bind_locally_with_timeouts_and_a_connection_cap(started: Any) -> None:
    app, options, _ = started()
    assert options["host"] == "127.0.0.1" and options["workers"] == 1
    assert options["limit_concurrency"] == 100 and options["timeout_keep_alive"] == 5
    assert options["h11_max_incomplete_event_size"] == 16 * 1024
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        for host in ("localhost:8000", "[::1]:8000"):
            assert client.get("/health", headers={"Host": host}).status_code == 200
        assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
        assert client.get("/info").status_code == 200  # no token asked for
        limits = client.get("/info").json()["limits"]
        assert limits["max_request_pixels"] == 100_000_000 and limits["max_queue_wait_s"] == 2.0


def test_token_allowed_hosts_and_limits_from_the_command_line(started: Any) -> None:
    app, options, result = started(
        "--host", "0.0.0.0", "--allowed-host", "vision.example", "--max-connections", "7", "--keep-alive", "2",
        "--max-queue-wait", "0.5", "--read-timeout", "9", "--paths", "name",
        env={"FRUGALVISION_TOKEN": "from-the-env"},
    )  # fmt: skip
    assert (
        options["host"] == "0.0.0.0"
        and options["limit_concurrency"] == 7
        and options["timeout_keep_alive"] == 2
    )
    assert "no --token" not in result.output
    with TestClient(app, base_url="http://vision.example") as client:
        assert client.get("/info").status_code == 401
        info = client.get("/info", headers={"Authorization": "Bearer from-the-env"}).json()
        assert info["limits"]["max_queue_wait_s"] == 0.5 and info["limits"]["read_timeout_s"] == 9.0
        assert client.get("/health", headers={"Host": "localhost"}).status_code == 400  # only the names given

    app, _, result = started("--host", "0.0.0.0")
    assert "--allowed-host" in result.output and "no --token" in result.output
    _, _, result = started("--token", " ")
    assert result.exit_code != 0 and "token is empty" in result.output
