"""Shared pytest plugins: real redis-server fixtures (tests/redis_server.py)."""

pytest_plugins = ["tests.redis_server"]
