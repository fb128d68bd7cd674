"""The metrics stack test's Prometheus configuration (pipeline.devtools.prometheus): what it scrapes,
how it authenticates to the sink, which rules it evaluates; and promtool accepts it when installed."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from pipeline.devtools.prometheus import ScrapeJob, config_text
from tests.unit.test_deploy_files import ALERTS


def test_the_config_scrapes_the_worker_and_the_sink_with_its_token_and_loads_the_alerts(tmp_path):
    token = tmp_path / "token"
    config = yaml.safe_load(config_text([ScrapeJob("orderstream-worker", ("127.0.0.1:6066",)),
                                         ScrapeJob("orderstream-sink", ("127.0.0.1:6070",), token)],
                                        [ALERTS], interval_s=1.0))
    assert config["global"] == {"scrape_interval": "1000ms", "evaluation_interval": "1000ms"}
    assert config["rule_files"] == [str(ALERTS)]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["orderstream-worker"]["static_configs"] == [{"targets": ["127.0.0.1:6066"]}]
    assert "authorization" not in jobs["orderstream-worker"]
    assert jobs["orderstream-sink"]["authorization"] == {"type": "Bearer", "credentials_file": str(token)}


@pytest.mark.skipif(not shutil.which("promtool"), reason="Debian's prometheus not installed (stack up --prometheus)")
def test_promtool_accepts_the_config(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    path = tmp_path / "prometheus.yml"
    path.write_text(config_text([ScrapeJob("orderstream-sink", ("127.0.0.1:6070",), token)], [ALERTS]))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
