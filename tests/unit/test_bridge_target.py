import pytest

from gateway.bridge.target import BrokerTarget, destination_for, parse_broker_url, parse_pin_policy
from gateway.config import load_settings
from gateway.errors import ConfigError

C = "9bf7540a-b129-4685-a120-730e8a0cb94b"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stomp://h", BrokerTarget("h", 61613, False, "/")),
        ("stomp://h:1234/", BrokerTarget("h", 1234, False, "/")),
        ("stomp+ssl://h", BrokerTarget("h", 61614, True, "/")),
        ("stomp://u:p@h:61613/prod", BrokerTarget("h", 61613, False, "prod", "u", "p")),
        ("stomp://u%40x:p%3Aw%2F@h/%2F", BrokerTarget("h", 61613, False, "/", "u@x", "p:w/")),
        ("stomp://u:@h/a%2Fb", BrokerTarget("h", 61613, False, "a/b", "u", "")),
        ("stomp://[::1]:7/v", BrokerTarget("::1", 7, False, "v")),
    ],
)
def test_broker_url(url: str, expected: BrokerTarget) -> None:
    target = parse_broker_url(url)
    assert target == expected
    assert target.passcode == expected.passcode


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("amqp://h", "got scheme .amqp."),
        ("stomp://", "no host"),
        ("stomp://h:99999", "port"),
        ("stomp://h:x", "port"),
        ("stomp://h/?ssl=1", "query"),
    ],
)
def test_bad_broker_url(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_broker_url(url)


def test_display_never_shows_the_passcode() -> None:
    target = parse_broker_url("stomp+ssl://svc:s3cret@[::1]:61614/prod")
    assert target.display == "stomp+ssl://svc@[::1]:61614/prod"
    assert "s3cret" not in repr(target)


def test_destination_template_replaces_only_the_placeholder() -> None:
    assert destination_for("/topic/convengine.audit.{conversationId}", C) == f"/topic/convengine.audit.{C}"
    assert destination_for("/exchange/x/{conversationId}.{other}", C) == f"/exchange/x/{C}.{{other}}"


def test_pin_policy() -> None:
    assert parse_pin_policy("") == parse_pin_policy(" , ")
    policy = parse_pin_policy(f" Submitted ,{C.upper()},{C}")
    assert policy.submitted and policy.conversations == (C,)
    with pytest.raises(ValueError, match="'everything'"):
        parse_pin_policy(f"{C},everything")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GATEWAY_BRIDGE_URL": "stomp://u:hunter2@h:0x/"}, "GATEWAY_BRIDGE_URL ([bridge] url): the port"),
        ({"GATEWAY_BRIDGE_URL": "http://h"}, "GATEWAY_BRIDGE_URL"),
        ({"GATEWAY_BRIDGE_PIN": "all"}, "GATEWAY_BRIDGE_PIN ([bridge] pin): expected conversation UUIDs"),
        ({"GATEWAY_BRIDGE_WINDOW": "0"}, "GATEWAY_BRIDGE_WINDOW"),
        ({"GATEWAY_BRIDGE_TLS_CA_FILE": "/nonexistent.pem"}, "GATEWAY_BRIDGE_TLS_CA_FILE"),
        ({"GATEWAY_BRIDGE_URL": "stomp://h", "GATEWAY_BRIDGE_TLS_CA_FILE": __file__}, "not a stomp+ssl://"),
    ],
)
def test_bad_bridge_settings_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env=env)
    assert needle in str(err.value)
    assert "hunter2" not in str(err.value)


def test_bridge_url_is_not_in_settings_repr() -> None:
    settings = load_settings(
        None, env={"GATEWAY_BRIDGE_URL": "stomp://u:hunter2@h/", "GATEWAY_BRIDGE_PIN": "submitted"}
    )
    assert "hunter2" not in repr(settings)
