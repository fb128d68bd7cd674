"""Pure parts of the local stack's provisioning (no broker started)."""
from pipeline.devtools.stack import new_cluster_id


def test_a_kraft_cluster_id_never_starts_with_a_dash():
    # 0xF8 encodes to '-' as the first URL-safe base64 character: the storage tool took it for an option
    draws = iter([bytes([0xF8]) + bytes(15), bytes(16)])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert all(not new_cluster_id().startswith("-") for _ in range(500))
