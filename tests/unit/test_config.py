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


def test_every_scheme_the_config_accepts_has_one_handler():
    """QuantConfig validates names before anything heavy is imported; the registry in
    quant/schemes.py is what runs them. The two lists must be the same."""
    from qfid.config import SCHEMES as CONFIG_SCHEMES
    from qfid.quant.codecs import CODECS
    from qfid.quant.schemes import SCHEMES

    assert set(SCHEMES) == set(CONFIG_SCHEMES)
    for name, handler in SCHEMES.items():
        assert handler.name == name and handler.codec in CODECS
