import argparse

import pytest

from gateway.errors import ConfigError
from gateway.simulator.cli import add_arguments, config_from_args
from gateway.simulator.config import SimulatorConfig
from gateway.simulator.faults import FaultSpec
from gateway.simulator.ids import parse_conversation_id

CONV = "3c90c3cc-0d44-4b50-8888-8dd25736052a"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_build_the_default_config():
    args = parse()
    assert (args.host, args.port) == ("127.0.0.1", 8090)
    assert config_from_args(args) == SimulatorConfig()


def test_flags_and_fault_json_build_the_config():
    args = parse("--token", "t", "--keepalive-s", "0.5", "--delta-interval-ms", "2", "--seed", "3",
                 "--drop-every", "5", "--missing", CONV, "--faults", '{"status": 503, "count": 2}')  # fmt: skip
    config = config_from_args(args)
    assert (config.token, config.keepalive_s, config.delta_interval_ms, config.seed) == ("t", 0.5, 2.0, 3)
    assert config.faults == FaultSpec(drop_every=5, missing=(CONV,), status=503, count=2)


@pytest.mark.parametrize(
    "argv",
    [("--port", "0"), ("--keepalive-s", "0"), ("--faults", "[1]"), ("--faults", "{x"), ("--drop-every", "-1"),
     ("--journal-max", "0"), ("--token", "")],
)  # fmt: skip
def test_bad_flags_raise_config_error(argv):
    with pytest.raises(ConfigError):
        config_from_args(parse(*argv))


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [(CONV, CONV), (CONV.upper(), CONV), (CONV.replace("-", ""), CONV), ("nope", None), (CONV + "0", None),
     ("{" + CONV + "}", None), ("3c90c3cc0d44-4b50-8888-8dd25736052a", None)],
)  # fmt: skip
def test_conversation_ids_are_canonical_uuids(raw, canonical):
    assert parse_conversation_id(raw) == canonical
