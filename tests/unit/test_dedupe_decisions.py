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


def test_re_reading_an_earlier_output_after_a_crash_re_emits_it_too():
    # SIGKILL story: the crashed worker's RocksDB kept PAID (new, from 0:20) and then SHIPPED
    # (update, from 0:22), but neither output reached the broker. On restart 0:20 is read first.
    paid = v("paid", 1000, 1).remembered_as("0:20", Change.NEW)
    shipped = v("shipped", 2000, 7).remembered_as("0:22", Change.UPDATE, previous=paid)
    assert decide(shipped, v("paid", 1000, 1), "0:20") is Change.NEW       # not STALE: re-emitted
    assert decide(shipped, v("shipped", 2000, 7), "0:22") is Change.UPDATE
    # the same PAID content re-normalized into another canonical message is a redelivery
    assert decide(shipped, v("paid", 1000, 1), "0:88") is Change.STALE
    assert decide(shipped, v("shipped", 2000, 7), "0:94") is Change.DUPLICATE


def test_history_is_bounded_and_survives_json():
    from pipeline.domain.dedupe import HISTORY
    seen = None
    for i in range(HISTORY + 5):
        seen = v(f"f{i}", 1000 + i, 1).remembered_as(f"0:{i}", Change.UPDATE if seen else Change.NEW, previous=seen)
    assert len(seen.earlier) == HISTORY - 1
    assert seen.emitted_by(f"0:{HISTORY + 4}") == "update" and seen.emitted_by(f"0:{HISTORY - 2}") == "update"
    assert seen.emitted_by("0:0") is None  # fell out of the window of remembered outputs
    assert SeenVersion.from_json(seen.to_json()) == seen
