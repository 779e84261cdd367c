"""The tests' own port picker: servers started in one test must never be given the same port."""

from tests.fixtures.ports import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(300)] + [free_port("127.0.0.3") for _ in range(100)]
    assert len(set(ports)) == len(ports)
