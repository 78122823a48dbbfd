"""The fault run, short (bench/outages.py): Redis killed under send and phone-side incoming load for a
few seconds (longer than LEASE_FENCE_S), then started again. Nothing sent twice or lost, nothing
received lost, twice or out of order, no WhatsApp connection dropped, and sends accepted again at once."""

from __future__ import annotations

import pytest

from bench.outages import parser, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_a_redis_outage_under_load_costs_nothing(tmp_path) -> None:
    args = parser().parse_args(["--services", "redis", "--down-seconds", "6", "--settle-seconds", "5",
                                "--companies", "3", "--send-rate", "2", "--incoming-rate", "5",
                                "--drain-seconds", "60"])
    (result,) = await run(args, tmp_path)
    assert result["sends"]["accepted"] == result["sends"]["started"] > 0, result
    assert result["sends"]["exactly_once"] == result["sends"]["accepted"], result
    assert result["incoming"]["accepted"] > 0, result
    assert result["incoming"]["delivered_once"] == result["incoming"]["accepted"], result
    assert result["incoming"]["lost"] == result["incoming"]["out_of_order"] == 0, result
    assert result["reconnects_caused"] == 0, result
    assert result["sends_accepted_again_after_s"] is not None and result["sends_accepted_again_after_s"] <= 5, result
