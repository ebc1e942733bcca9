from tests.integration.conftest import conv, logs, simulator, start_gateway, start_simulator  # noqa: F401
