from tests.integration.conftest import conv, logs, start_gateway, start_simulator  # noqa: F401
