"""The connection layer's one guard: a uvicorn without what a hook needs turns every hook off, saying why."""

from __future__ import annotations

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.transports import uvicorn_hooks
from gateway.transports.server_hooks import load_hooks


def test_a_missing_uvicorn_internal_turns_every_hook_off(monkeypatch: pytest.MonkeyPatch) -> None:
    required = {**uvicorn_hooks.REQUIRED, HttpToolsProtocol: ("on_message_begin", "renamed_in_a_new_release")}
    monkeypatch.setattr(uvicorn_hooks, "REQUIRED", required)
    hooks = load_hooks(True, max_head_bytes=4096, head_timeout_s=1.0, max_heads_per_address=0)
    assert not hooks.active and hooks.http == "h11" and hooks.ws == "websockets-sansio"
    assert hooks.describe().startswith(
        "server hooks off (this uvicorn lacks HttpToolsProtocol.renamed_in_a_new_release)"
    )


def test_every_name_the_hooks_need_exists_in_the_installed_uvicorn() -> None:
    assert load_hooks(True, max_head_bytes=4096, head_timeout_s=1.0, max_heads_per_address=0).active
