"""Pure dedupe decisions (no Kafka)."""
from pipeline.domain.dedupe import Change, SeenVersion, decide, newest


def v(fp="a", ts=1000, rank=1, source="", change=""):
    return SeenVersion(fp, ts, rank, source, change)


def test_first_sighting_is_new():
    assert decide(None, v()) is Change.NEW


def test_same_content_is_a_duplicate():
    assert decide(v("x", 1000, 1, "0:5", "new"), v("x", 1000, 1), "0:9") is Change.DUPLICATE


def test_newer_update_time_is_an_update_even_with_a_lower_status():
    assert decide(v("x", 1000, 5), v("y", 2000, 3)) is Change.UPDATE


def test_same_time_further_status_is_an_update():
    assert decide(v("x", 1000, 1), v("y", 1000, 7)) is Change.UPDATE


def test_older_version_arriving_late_is_stale():
    assert decide(v("new", 2000, 7), v("old", 1000, 1)) is Change.STALE


def test_reprocessing_the_message_that_was_remembered_re_emits_it():
    remembered = v("x", 1000, 1).remembered_as("3:42", Change.NEW)
    assert decide(remembered, v("x", 1000, 1), "3:42") is Change.NEW
    updated = v("y", 2000, 5).remembered_as("3:43", Change.UPDATE)
    assert decide(updated, v("y", 2000, 5), "3:43") is Change.UPDATE
    # a different message with the same content is still a redelivery
    assert decide(updated, v("y", 2000, 5), "3:44") is Change.DUPLICATE


def test_json_round_trip_keeps_source_and_change():
    remembered = v("x", 1000, 1).remembered_as("1:2", Change.UPDATE)
    assert SeenVersion.from_json(remembered.to_json()) == remembered
    assert SeenVersion.from_json({"fingerprint": "x", "updated_at_ms": 1, "status_rank": 0}).source == ""


def test_newest_keeps_only_emitted_versions():
    assert newest(v("a"), v("b"), Change.UPDATE) == v("b")
    assert newest(v("a"), v("b"), Change.STALE) is None
