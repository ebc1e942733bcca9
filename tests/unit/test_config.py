import dataclasses
from pathlib import Path

import pytest

from gateway.config import SETTINGS, Settings, load_settings
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_table_matches_settings_dataclass() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert fields == {s.field: s.default for s in SETTINGS}


def test_fixed_env_names_exist() -> None:
    names = {s.env for s in SETTINGS}
    for fixed in (
        "GATEWAY_HOST",
        "GATEWAY_PORT",
        "GATEWAY_HQ_BASE_URL",
        "GATEWAY_HQ_TOKEN",
        "GATEWAY_REDIS_URL",
        "GATEWAY_JOURNAL_MAX_EVENTS",
        "GATEWAY_JOURNAL_MAX_AGE_S",
        "GATEWAY_AUTH_MODE",
        "GATEWAY_BRIDGE_URL",
        "GATEWAY_BRIDGE_DESTINATION",
    ):
        assert fixed in names


def test_shipped_toml_documents_every_setting_and_loads() -> None:
    text = (ROOT / "config" / "gateway.toml").read_text()
    for s in SETTINGS:
        assert s.env in text, f"{s.env} undocumented in config/gateway.toml"
    assert load_settings(ROOT / "config" / "gateway.toml", env={}) == Settings()


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text("[server]\nport = 9000\n[journal]\nmax_events = 5\n")
    s = load_settings(cfg, env={"GATEWAY_PORT": "9100", "GATEWAY_AUTH_MODE": "jwt"})
    assert (s.port, s.journal_max_events, s.auth_mode) == (9100, 5, "jwt")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GATEWAY_PORT": "abc"}, "GATEWAY_PORT: expected int, got 'abc'"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT ([server] port): expected a value between 1 and 65535"),
        ({"GATEWAY_AUTH_MODE": "open"}, "GATEWAY_AUTH_MODE ([auth] mode): expected one of none, jwt, hq"),
        ({"GATEWAY_HQ_BASE_URL": "ftp://x"}, "GATEWAY_HQ_BASE_URL"),
        ({"GATEWAY_BRIDGE_DESTINATION": "/topic/x"}, "must contain {conversationId}"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env=env)
    assert needle in str(err.value)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting \[server\] prot"):
        load_settings(cfg, env={})
