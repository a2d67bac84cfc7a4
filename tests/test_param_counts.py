"""Paper-size constructors count exactly the parameters of the official modules (shared/reference/PARAMS_*.md).

Models are built on the meta device, so even the largest costs no memory or init time.
"""

from __future__ import annotations

import pytest

from vitsuite.models import count_model_parameters

# (registered name, config overrides, official count, source row)
PAPER_COUNTS = [
    ("itransformer_etth1", {"pred_len": 96}, 841_568, "PARAMS_timeseries ETTh1-96"),
    ("itransformer_etth1", {"pred_len": 192}, 866_240, "PARAMS_timeseries ETTh1-192"),
    ("itransformer_etth1_long", {"pred_len": 336}, 3_379_024, "PARAMS_timeseries ETTh1-336"),
    ("itransformer_etth1_long", {"pred_len": 720}, 3_576_016, "PARAMS_timeseries ETTh1-720"),
    ("itransformer", {"pred_len": 96}, 4_833_888, "PARAMS_timeseries ECL/Weather-96"),
    ("itransformer", {"pred_len": 192}, 4_883_136, "PARAMS_timeseries ECL/Weather-192"),
    ("itransformer", {"pred_len": 336}, 4_957_008, "PARAMS_timeseries ECL/Weather-336"),
    ("itransformer", {"pred_len": 720}, 5_154_000, "PARAMS_timeseries ECL/Weather-720"),
    ("itransformer_traffic", {"pred_len": 96}, 6_411_872, "PARAMS_timeseries Traffic-96"),
    ("itransformer_traffic", {"pred_len": 720}, 6_731_984, "PARAMS_timeseries Traffic-720"),
]


@pytest.mark.parametrize("name,overrides,expected,source", PAPER_COUNTS, ids=[r[3] for r in PAPER_COUNTS])
def test_paper_parameter_count(name, overrides, expected, source):
    assert count_model_parameters(name, **overrides) == expected, source
