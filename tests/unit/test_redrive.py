"""Re-driving one dead letter, without Kafka: what goes back to which raw topic, what is skipped, and the
ledger shared with the console that lets each letter be re-driven once."""
from __future__ import annotations

import pytest

from pipeline.redrive import LetterRedriver, RedriveReport, redrive_record
from pipeline.redrive_ledger import CLAIMED, SENT, Redrive, RedriveLedger
from tests.redrive_memory import memory_ledger

LETTER = {"source_topic": "orders.raw.jd", "key": b"k1", "payload": b'{"orderId": 1}',
          "reason_code": "unknown_status"}


def test_a_letter_goes_back_to_its_source_topic_with_its_original_bytes_and_origin():
    assert redrive_record(LETTER, "", "orders.dlq:2:17") == (
        "orders.raw.jd", b"k1", b'{"orderId": 1}', [("redriven_from", b"orders.dlq:2:17")])


def test_the_reason_filter_skips_other_letters():
    assert redrive_record(LETTER, "truncated", "orders.dlq:0:0") is None
    assert redrive_record(LETTER, "unknown_status", "orders.dlq:0:0") is not None


def test_the_report_reads_as_the_command_prints_it():
    assert str(RedriveReport(1, 2, False)) == "re-driven: 1, skipped: 2"
    assert str(RedriveReport(1, 0, True)) == "re-driven: 1, skipped: 0 (dry run)"


# -- the ledger shared with the console: each letter once, whoever asks -------------------------------

def test_the_first_claim_wins_and_the_second_is_told_who_and_when():
    ledger = memory_ledger()
    first = ledger.claim("orders.dlq:0:5", "bob", "console", 1_796_000_000_000)
    second = ledger.claim("orders.dlq:0:5", "carol", "cli", 1_796_000_060_000)
    assert first.won and not second.won
    assert second.record == first.record  # the refusal carries the first claimant's record, not its own
    ledger.confirm(first.record)
    refused = ledger.claim("orders.dlq:0:5", "carol", "cli", 1_796_000_120_000)
    assert not refused.won and refused.record.state == SENT
    assert refused.record.describe() == ("orders.dlq:0:5 was already re-driven by bob with the console "
                                         "at 2026-11-30T00:53:20Z")
    assert ledger.claim("orders.dlq:0:6", "carol", "cli", 0).won  # another letter is another key


def test_an_unconfirmed_claim_says_it_may_not_have_gone_out():
    ledger = memory_ledger()
    ledger.claim("orders.dlq:1:2", "carol", "cli", 0)
    prior = ledger.claim("orders.dlq:1:2", "bob", "console", 1).record
    assert prior.state == CLAIMED and "not yet confirmed sent" in prior.describe() and "carol" in prior.describe()


def test_a_failed_publish_gives_the_letter_back_but_only_its_own_claim():
    ledger = memory_ledger()
    mine = ledger.claim("orders.dlq:0:1", "bob", "console", 10).record
    ledger.release(mine)
    assert ledger.find("orders.dlq:0:1") is None
    theirs = ledger.claim("orders.dlq:0:1", "carol", "cli", 20).record
    ledger.release(mine)  # a stale release must not drop somebody else's claim
    assert ledger.find("orders.dlq:0:1") == theirs
    with pytest.raises(RuntimeError):
        ledger.confirm(mine)


def test_a_claim_names_its_operator_and_how():
    ledger = memory_ledger()
    with pytest.raises(ValueError):
        ledger.claim("orders.dlq:0:1", "  ", "cli", 0)
    with pytest.raises(ValueError):
        ledger.claim("orders.dlq:0:1", "bob", "email", 0)


def test_the_record_round_trips_and_is_keyed_by_the_letters_coordinates():
    record = Redrive("t1.orders.dlq:2:17", "bob", "console", 123, SENT)
    assert Redrive.decode(record.encode()) == record
    assert RedriveLedger.key("t1.orders.dlq:2:17") == "orderstream:redrive:t1.orders.dlq:2:17"


def test_the_cli_skips_a_letter_the_console_re_drove_naming_who():
    ledger = memory_ledger()
    console = ledger.claim("orders.dlq:2:17", "bob", "console", 1_796_000_000_000).record
    ledger.confirm(console)
    cli = LetterRedriver(ledger, "carol", clock=lambda: 1_796_000_100.0)
    assert cli.offer(LETTER, "orders.dlq:2:17") is None
    record, claim = cli.offer(LETTER, "orders.dlq:2:18")
    assert record == ("orders.raw.jd", b"k1", b'{"orderId": 1}',
                      [("redriven_from", b"orders.dlq:2:18"), ("redriven_by", b"carol")])
    assert claim.operator == "carol" and claim.via == "cli"
    cli.delivered(claim, None)
    assert ledger.find("orders.dlq:2:18").state == SENT
    report = cli.report()
    assert (report.redriven, report.skipped) == (1, 0)
    assert str(report).splitlines() == [
        "re-driven: 1, skipped: 0, already re-driven: 1",
        "  orders.dlq:2:17 was already re-driven by bob with the console at 2026-11-30T00:53:20Z; not sent again"]


def test_the_cli_releases_a_letter_the_broker_did_not_take():
    ledger = memory_ledger()
    cli = LetterRedriver(ledger, "carol")
    _, claim = cli.offer(LETTER, "orders.dlq:0:3")
    cli.delivered(claim, "Local: Message timed out")
    assert ledger.find("orders.dlq:0:3") is None  # the console (or a next run) may re-drive it
    assert cli.report().redriven == 0 and "failed: 1" in str(cli.report())


def test_a_dry_run_claims_nothing_and_a_real_run_needs_an_operator():
    ledger = memory_ledger()
    ledger.claim("orders.dlq:0:1", "bob", "console", 0)
    dry = LetterRedriver(ledger, "", dry_run=True)
    assert dry.offer(LETTER, "orders.dlq:0:1") is None and dry.offer(LETTER, "orders.dlq:0:2") is None
    assert (dry.report().redriven, len(dry.report().already)) == (1, 1)
    assert ledger.find("orders.dlq:0:2") is None
    filtered = LetterRedriver(ledger, "carol", reason="truncated")
    assert filtered.offer(LETTER, "orders.dlq:0:9") is None and filtered.report().skipped == 1
    assert ledger.find("orders.dlq:0:9") is None  # a letter filtered out is not claimed
    with pytest.raises(ValueError):
        LetterRedriver(ledger, " ")
