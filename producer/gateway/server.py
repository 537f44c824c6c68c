"""``rerankq gateway``: serve the HTTP gateway with uvicorn (one process; run as many replicas as you like)."""

from __future__ import annotations

import argparse
import ipaddress
import socket

from rerankq.settings import Settings


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only listens on this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to listen beyond this machine without API keys, unless told so explicitly."""
    if settings.api_keys or settings.gateway.allow_no_auth or is_loopback(host):
        return
    raise SystemExit(f"rerankq gateway: refusing to listen on {host} without API keys. Set RERANKQ_API_KEYS "
                     "(comma-separated bearer keys), or RERANKQ_GATEWAY__ALLOW_NO_AUTH=true to serve without auth.")


def run_gateway(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    from rerankq.client.gateway.app import create_app

    check_exposure(settings, host)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    run_gateway(Settings(), args.host, args.port, "debug" if args.verbose else "info")
    return 0
