"""Signal equations, gadolinium T1 shortening and the tissue table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.phantom.signal import (
    DiffusionEpi,
    Flair,
    Mprage,
    SpoiledGre,
    Tse,
    flair_null_ti,
    mprage_signal,
    spgr_signal,
    t1_with_gadolinium,
    tissue_signal,
)
from training.phantom.tissues import TISSUES, tissue_params

SIEMENS_MPRAGE = Mprage(1900.0, 900.0, 7.0, 176, 88, 2.5, 9.0)


def _simulate_mprage(t1: float, seq: Mprage, cycles: int = 40) -> float:
    """Step-by-step Bloch recursion of Mz over inversion cycles (no closed form)."""
    alpha = math.radians(seq.flip_deg)
    ta = seq.ti_ms - seq.centre_index * seq.echo_spacing_ms
    td = seq.cycle_ms - ta - seq.readouts * seq.echo_spacing_ms
    mz, signal = 1.0, 0.0
    for _ in range(cycles):
        mz = -seq.inversion_efficiency * mz
        mz = 1 - (1 - mz) * math.exp(-ta / t1)
        for k in range(seq.readouts):
            if k == seq.centre_index:
                signal = mz * math.sin(alpha)
            mz *= math.cos(alpha)
            mz = 1 - (1 - mz) * math.exp(-seq.echo_spacing_ms / t1)
        mz = 1 - (1 - mz) * math.exp(-td / t1)
    return abs(signal)


class TestEquations:
    @pytest.mark.parametrize("t1", [300.0, 884.0, 1820.0, 4400.0])
    @pytest.mark.parametrize("seq", [SIEMENS_MPRAGE, Mprage(2198.0, 1024.0, 8.2, 140, 70, 3.2, 12.0)])
    def test_mprage_closed_form_equals_bloch_recursion(self, t1: float, seq: Mprage) -> None:
        assert float(mprage_signal(1.0, t1, 1e12, seq)) == pytest.approx(_simulate_mprage(t1, seq), rel=1e-9)

    def test_spgr_matches_methods_formula(self) -> None:
        seq = SpoiledGre(7.0, 3.0, 8.0)
        e1 = math.exp(-7.0 / 1084.0)
        a = math.radians(8.0)
        expected = 0.69 * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-3.0 / 53.0)
        assert float(spgr_signal(0.69, 1084.0, 53.0, seq)) == pytest.approx(expected, rel=1e-12)

    def test_gadolinium_shortens_t1_linearly_in_rate(self) -> None:
        t1 = float(t1_with_gadolinium(1000.0, 0.5, 4.5))
        assert 1 / t1 == pytest.approx(1 / 1000.0 + 4.5 * 0.5 / 1000.0)
        assert float(t1_with_gadolinium(1000.0, 0.0, 4.5)) == 1000.0

    def test_flair_nulls_csf(self) -> None:
        csf = tissue_params("csf", 3.0)
        seq = Flair(9000.0, 95.0, flair_null_ti(csf.t1_ms, 9000.0))
        assert tissue_signal(csf, seq) == pytest.approx(0.0, abs=1e-12)
        assert tissue_signal(tissue_params("oedema", 3.0), seq) > tissue_signal(tissue_params("wm", 3.0), seq)

    def test_t1_contrast_order(self) -> None:
        signals = {t: tissue_signal(tissue_params(t, 3.0), SIEMENS_MPRAGE) for t in ("wm", "gm", "csf", "fat")}
        assert signals["fat"] > signals["wm"] > signals["gm"] > signals["csf"]

    def test_t2_contrast_order_and_flow_void(self) -> None:
        seq = Tse(5000.0, 100.0)
        signals = {t: tissue_signal(tissue_params(t, 3.0), seq) for t in ("wm", "gm", "csf", "blood")}
        assert signals["csf"] > signals["gm"] > signals["wm"] > signals["blood"]

    def test_diffusion_weighting_follows_adc(self) -> None:
        wm = tissue_params("wm", 3.0)
        b0, b1000 = (tissue_signal(wm, DiffusionEpi(5200.0, 72.0, b)) for b in (0.0, 1000.0))
        assert math.log(b0 / b1000) / 1000.0 * 1e6 == pytest.approx(wm.adc)

    def test_enhancement_increases_with_dose(self) -> None:
        tumour = tissue_params("tumour", 3.0)
        values = [tissue_signal(tumour, SIEMENS_MPRAGE, concentration_mm=0.4 * d, r1=4.5) for d in (0, 0.1, 0.33, 1)]
        assert values == sorted(values) and values[-1] > 2 * values[0]


class TestErrors:
    def test_impossible_mprage_timing(self) -> None:
        with pytest.raises(ValueError, match=r"MPRAGE timing impossible: TI 100\.0 ms"):
            mprage_signal(1.0, 1000.0, 50.0, Mprage(1900.0, 100.0, 7.0, 176, 88, 2.5, 9.0))

    def test_unknown_tissue(self) -> None:
        with pytest.raises(KeyError, match="Unknown tissue 'bone marrow'"):
            tissue_params("bone marrow", 3.0)

    def test_unknown_sequence(self) -> None:
        with pytest.raises(TypeError, match="Unknown sequence type str"):
            tissue_signal(tissue_params("wm", 3.0), "mprage")  # type: ignore[arg-type]


class TestTissueTable:
    def test_values_physical(self) -> None:
        for name, tissue in TISSUES.items():
            assert 0 < tissue.pd <= 1.0, name
            for field in (1.5, 3.0):
                assert tissue.t2s_ms[field] <= tissue.t2_ms[field], name
        # Longer T1 at 3 T than at 1.5 T for soft tissue (Stanisz 2005).
        for name in ("wm", "gm", "muscle", "blood"):
            assert TISSUES[name].t1_ms[3.0] > TISSUES[name].t1_ms[1.5]

    def test_nearest_field_strength(self) -> None:
        assert tissue_params("wm", 2.9).t1_ms == TISSUES["wm"].t1_ms[3.0]
        assert np.isclose(tissue_params("gm", 1.0).t1_ms, TISSUES["gm"].t1_ms[1.5])
