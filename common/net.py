"""Addresses: which hosts only this machine can reach, and a free loopback port."""

from __future__ import annotations

import ipaddress
import re
import socket

_SCHEME = re.compile(r"^(dns:(///)?|ipv4:|ipv6:)")


def is_loopback_host(host: str) -> bool:
    """True for hosts only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    host = host.strip()
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_this_host(host: str) -> bool:
    """True for loopback hosts and for this machine's own addresses (it can bind them): traffic to
    them never leaves the machine. A name is resolved; any address it resolves to must be ours."""
    if is_loopback_host(host):
        return True
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0))
        except OSError:
            return False
    return bool(infos)


def target_host(target: str) -> str:
    """The host part of a gRPC target such as ``dns:///example.com:443`` or ``[::1]:50051``."""
    host = _SCHEME.sub("", target)
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (plaintext and an API key are tolerable only there)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    return is_loopback_host(target_host(target))


def listen_address(host: str, port: int) -> str:
    """``host:port``, bracketing a bare IPv6 host."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests, demos and benchmarks on loopback)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
