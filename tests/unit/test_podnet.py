"""The pod network's pure rules: which addresses are pod addresses, how forwards are written, and that a pod
address is never dialled from outside the namespace."""

from __future__ import annotations

import pytest

from devcluster.podnet import Forward, PodNetworkError, guard_dial, is_pod_address


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.244.0.1", True),
        ("10.244.1.17", True),
        ("10.244.255.255", True),
        ("10.245.0.1", False),
        ("10.243.255.255", False),
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
    ],
)
def test_pod_addresses_are_exactly_the_pod_range(host: str, expected: bool) -> None:
    assert is_pod_address(host) is expected


def test_a_forward_reads_back_as_written() -> None:
    text = "host:127.0.0.1:9090=podnet:10.244.0.1:9090"
    forward = Forward.parse(text)
    assert (forward.listen_side, forward.listen_addr, forward.listen_port) == ("host", "127.0.0.1", 9090)
    assert (forward.dial_side, forward.dial_addr, forward.dial_port) == ("podnet", "10.244.0.1", 9090)
    assert str(forward) == text


@pytest.mark.parametrize(
    "text",
    [
        "host:10.244.0.1:80=podnet:10.244.0.1:80",  # the host side must be loopback: it would leave the machine
        "podnet:127.0.0.1:80=host:192.0.2.1:80",
        "outside:127.0.0.1:80=podnet:10.244.0.1:80",  # unknown side
    ],
)
def test_a_forward_never_touches_a_non_loopback_host_address(text: str) -> None:
    with pytest.raises(ValueError):
        Forward.parse(text)


def test_guard_refuses_a_pod_address_outside_the_namespace() -> None:
    with pytest.raises(PodNetworkError, match="outside the pod network"):
        guard_dial("10.244.1.5", None)


def test_guard_lets_loopback_through() -> None:
    guard_dial("127.0.0.1", None)
