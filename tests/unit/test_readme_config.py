"""The README's configuration table is generated from pipeline/config.py (benchmarks.readme_tables):
a setting added, renamed or re-documented without regenerating it fails here."""
import re

from benchmarks.readme_tables import README, config_table


def test_readme_configuration_table_is_the_generated_one():
    block = re.search(r"<!-- config:start -->\n(.*?)\n<!-- config:end -->", README.read_text(), re.S)
    assert block, "README lacks the <!-- config:start --> ... <!-- config:end --> block"
    assert block.group(1) == config_table(), "regenerate it: .venv/bin/python -m benchmarks.readme_tables"
    assert "ORDERSTREAM_ANALYST_MAX_EXECUTION_S" in block.group(1)
