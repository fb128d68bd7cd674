"""The profile benchmark attributes py-spy samples to their owners correctly."""
from benchmarks.bench_worker_profile import summarize

COLLAPSED = "\n".join([
    # py-spy names files relative to their sys.path entry
    "<module> (pipeline/cli.py:1);normalize_agent (agents/normalize.py:30);normalize (pipeline/domain/normalize.py:9) 6",
    "<module> (pipeline/cli.py:1);normalize_agent (agents/normalize.py:30);send (faust/topics.py:5) 2",
    "<module> (pipeline/cli.py:1);_run_once (asyncio/base_events.py:1);select (selectors.py:468) 10",
    "<module> (pipeline/cli.py:1);risk_agent (agents/risk.py:3);_encode (aiokafka/record.py:1) 2",
    "not a sample line",
])


def test_samples_are_split_by_the_leaf_frames_owner():
    got = summarize(COLLAPSED)
    assert got["samples"] == 20
    assert got["idle_in_select_pct"] == 50.0
    assert got["self_time_pct_by_owner"] == {"asyncio + selectors (event loop)": 50.0, "our code": 30.0,
                                             "faust + mode (stream, table, agent machinery)": 10.0,
                                             "aiokafka (client, protocol, record batches)": 10.0}


def test_stages_count_every_sample_below_their_agent():
    assert summarize(COLLAPSED)["inclusive_pct_by_stage"] == {"normalize": 40.0, "risk": 10.0}
