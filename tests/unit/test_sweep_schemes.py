"""The sweep's scheme syntax: what parses to what, and one-line errors for the rest."""
from __future__ import annotations

import pytest

from qfid.errors import QfidError
from qfid.sweep.schemes import SweepScheme, parse_schemes


def test_schemes_parse_to_base_keep_and_calibration():
    got = parse_schemes("fp8, awq-int4,awq-int4+keep:8,rtn-int4+keep16:auto,awq-int4@suite,fp8+keep16:2")
    assert got[0] == SweepScheme("fp8", "fp8")
    assert got[2] == SweepScheme("awq-int4+keep:8", "awq-int4", "fp8", 8)
    assert got[3] == SweepScheme("rtn-int4+keep16:auto", "rtn-int4", "bf16", None, auto=True)
    assert got[4].suite_calib and got[4].keep_as is None
    assert got[5].keep_as == "bf16" and got[5].keep_n == 2
    assert got[2].folder == "awq-int4+keep-8" and got[4].folder == "awq-int4_suite"
    assert got[3].with_n(5) == SweepScheme("rtn-int4+keep16:5", "rtn-int4", "bf16", 5)


def test_quant_config_of_a_kept_scheme():
    config = parse_schemes("awq-int4+keep:2")[0].quant_config("c.jsonl", ["a", "b"])
    assert config.keep == ["a", "b"] and config.keep_as == "fp8" and config.format == "compressed-tensors"
    assert config.calib == "c.jsonl"
    assert parse_schemes("awq-int4")[0].quant_config(None).format == "autoawq"


@pytest.mark.parametrize("text, message", [
    ("gptq", "unknown scheme 'gptq'"),
    ("awq-int4+keep", "unknown scheme"),
    ("awq-int4+keep:x", "unknown scheme"),
    ("fp8+keep:4", "keeps layers in 16 bits"),
    ("awq-int4,awq-int4", "listed twice"),
    (" , ", "names no scheme"),
])
def test_bad_schemes_fail_with_one_line(text, message):
    with pytest.raises(QfidError, match=message):
        parse_schemes(text)
