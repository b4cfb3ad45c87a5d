from __future__ import annotations

import pytest

from qfid.config import QuantConfig
from qfid.errors import QfidError


def test_defaults_pick_format_per_scheme():
    assert QuantConfig(scheme="awq-int4").format == "autoawq"
    assert QuantConfig(scheme="fp8").format == "compressed-tensors"


@pytest.mark.parametrize("kwargs,match", [
    ({"scheme": "int3"}, "scheme must be one of"),
    ({"scheme": "fp8", "format": "autoawq"}, "holds INT4 only"),
    ({"group_size": 100}, "power of two"),
    ({"fp8_activations": "sometimes"}, "fp8 activations"),
    ({"calib_samples": 0}, "calibration"),
])
def test_bad_values_fail_with_one_line(kwargs, match):
    with pytest.raises(QfidError, match=match) as exc:
        QuantConfig(**kwargs)
    assert "\n" not in str(exc.value)
