"""Command line: hq-gateway serve | simulate | demo."""

from __future__ import annotations

import argparse
import sys

from gateway.config import load_settings
from gateway.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hq-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML settings file (GATEWAY_* variables override it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"hq-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"hq-gateway: {args.command} on {settings.host}:{settings.port} (not yet implemented)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
