"""Tissue relaxation, proton density and diffusion values at 1.5 T and 3 T, with the literature they come from."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["STANDARD_DOSE_CONCENTRATION_MM", "TISSUES", "Tissue", "TissueParams", "tissue_params"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tissue:
    """One tissue class: proton density relative to water, T1/T2/T2* per field strength (ms), ADC (1e-6 mm^2/s).

    ``flow_void`` marks flowing blood: spin-echo based sequences (TSE, FLAIR, diffusion EPI) lose its signal.
    ``fat`` marks lipid signal that fat saturation removes (diffusion EPI).
    """

    pd: float
    t1_ms: dict[float, float]
    t2_ms: dict[float, float]
    t2s_ms: dict[float, float]
    adc: float
    flow_void: bool = False
    fat: bool = False


@dataclass(frozen=True)
class TissueParams:
    """The values of one tissue at one field strength (what the signal equations take)."""

    name: str
    pd: float
    t1_ms: float
    t2_ms: float
    t2s_ms: float
    adc: float
    flow_void: bool
    fat: bool


# Sources (T1, T2 in ms at 1.5 T / 3 T; PD relative to pure water; ADC in 1e-6 mm^2/s at 37 C):
# [S05] Stanisz GJ et al. T1, T2 relaxation and magnetization transfer in tissue at 3T. MRM 2005;54:507-512
#       (white and grey matter, skeletal muscle, blood; same protocol at 1.5 T and 3 T).
# [G04] Gold GE et al. Musculoskeletal MRI at 3.0 T: relaxation times and image contrast. AJR 2004;183:343-351
#       (subcutaneous fat, bone marrow).
# [R07] Rooney WD et al. Magnetic field and tissue dependencies of human brain longitudinal 1H2O relaxation in vivo.
#       MRM 2007;57:308-318 (CSF T1 about 4.3-4.5 s, nearly independent of field strength).
# [P07] Peters AM et al. T2* measurements in human brain at 1.5, 3 and 7 T. MRI 2007;25:748-753 (GM, WM T2*).
# [N06] Neeb H et al. A new method for fast quantitative mapping of absolute water content in vivo.
#       NeuroImage 2006;31:1156-1168 (water content: WM about 0.69, GM about 0.80).
# [H02] Helenius J et al. Diffusion-weighted MR imaging in normal human brains in various age groups.
#       AJNR 2002;23:194-199 (ADC: WM about 0.70e-3, GM about 0.80-0.89e-3 mm^2/s; CSF about 3.0e-3).
# [Z07] Zhao JM et al. Oxygenation and hematocrit dependence of transverse relaxation rates of blood at 3T.
#       MRM 2007;58:592-597 (venous blood T2 of tens of ms at 3 T, about 150-200 ms at 1.5 T).
# [R05] Reichert IL et al. Magnetic resonance imaging of cortical bone with ultrashort TE pulse sequences.
#       MRI 2005;23:611-618 (cortical bone T2* about 0.4-0.5 ms: dark on every conventional sequence).
# [B17] Badve C et al. MR fingerprinting of adult brain tumors: initial experience. AJNR 2017;38:492-499
#       (3 T: solid tumour, necrosis, peritumoural oedema and lower-grade glioma T1 and T2 lie well above normal
#       white matter; the lesion values below are chosen inside the reported ranges, and scaled to 1.5 T with the
#       white-matter field ratio of [S05]).
# [K01] Kono K et al. The role of diffusion-weighted imaging in patients with brain tumors. AJNR 2001;22:1081-1088
#       (ADC of enhancing tumour about 1.0-1.1e-3, peritumoural oedema about 1.3-1.6e-3, necrosis higher).
# Values marked "approx." have no single measured source; they are set between neighbouring tissues so that the
# structure looks as it does on clinical images (dura and skin dark-grey on T1w, choroid plexus grey).
TISSUES: dict[str, Tissue] = {
    "wm": Tissue(0.69, {1.5: 884, 3.0: 1084}, {1.5: 72, 3.0: 69}, {1.5: 66, 3.0: 53}, 720),  # S05 P07 N06 H02
    "gm": Tissue(0.80, {1.5: 1124, 3.0: 1820}, {1.5: 95, 3.0: 99}, {1.5: 84, 3.0: 66}, 830),  # S05 P07 N06 H02
    "csf": Tissue(1.00, {1.5: 4300, 3.0: 4400}, {1.5: 2000, 3.0: 1800}, {1.5: 1500, 3.0: 1200}, 3000),  # R07 H02
    "blood": Tissue(  # venous blood: S05 (T1), Z07 (T2); flowing, so dark on spin echo
        0.87, {1.5: 1441, 3.0: 1932}, {1.5: 180, 3.0: 60}, {1.5: 60, 3.0: 30}, 1600, flow_void=True
    ),
    # Fat PD: the main methylene peak carries ~70% of the lipid protons; the others are shifted off resonance.
    "fat": Tissue(0.70, {1.5: 343, 3.0: 382}, {1.5: 58, 3.0: 68}, {1.5: 40, 3.0: 30}, 20, fat=True),  # G04
    "marrow": Tissue(0.65, {1.5: 549, 3.0: 586}, {1.5: 49, 3.0: 49}, {1.5: 25, 3.0: 18}, 200, fat=True),  # G04
    "bone": Tissue(0.05, {1.5: 260, 3.0: 300}, {1.5: 1.0, 3.0: 0.8}, {1.5: 0.5, 3.0: 0.4}, 0),  # R05
    "muscle": Tissue(0.75, {1.5: 1008, 3.0: 1412}, {1.5: 44, 3.0: 50}, {1.5: 30, 3.0: 25}, 1500),  # S05
    "skin": Tissue(0.70, {1.5: 750, 3.0: 950}, {1.5: 35, 3.0: 32}, {1.5: 25, 3.0: 20}, 900),  # approx.
    "dura": Tissue(0.60, {1.5: 900, 3.0: 1100}, {1.5: 40, 3.0: 35}, {1.5: 25, 3.0: 20}, 900),  # approx.
    "choroid_plexus": Tissue(0.85, {1.5: 1150, 3.0: 1600}, {1.5: 95, 3.0: 85}, {1.5: 60, 3.0: 45}, 1200),  # approx.
    "pituitary": Tissue(0.80, {1.5: 1000, 3.0: 1400}, {1.5: 90, 3.0: 85}, {1.5: 60, 3.0: 45}, 800),  # approx.
    "tumour": Tissue(0.85, {1.5: 1400, 3.0: 1750}, {1.5: 105, 3.0: 95}, {1.5: 70, 3.0: 55}, 1050),  # B17 K01
    "necrosis": Tissue(0.95, {1.5: 2400, 3.0: 3000}, {1.5: 300, 3.0: 260}, {1.5: 150, 3.0: 120}, 2200),  # B17 K01
    "oedema": Tissue(0.85, {1.5: 1180, 3.0: 1450}, {1.5: 135, 3.0: 125}, {1.5: 90, 3.0: 75}, 1450),  # B17 K01
    "nonenhancing": Tissue(0.88, {1.5: 1550, 3.0: 1900}, {1.5: 170, 3.0: 155}, {1.5: 110, 3.0: 90}, 1400),  # B17
}

#: Gadolinium concentration (mM) reached in each enhancing compartment at the standard dose (0.1 mmol/kg), a few
#: minutes after injection. Whole-blood concentration: about 0.1 mmol/kg in ~70 ml/kg blood, minus early
#: extravasation and renal clearance, gives ~0.7-1.0 mM. Extravascular tissue with a leaky (or absent)
#: blood-brain barrier reaches its extracellular volume fraction (0.2-0.5) times the plasma level (Tofts & Kermode,
#: MRM 1991;17:357-367). Normal parenchyma (intact barrier) is set to exactly 0: its small intravascular share is
#: left out so that "no contrast" regions are exactly defined.
STANDARD_DOSE_CONCENTRATION_MM: dict[str, float] = {
    "blood": 0.8,
    "choroid_plexus": 0.35,
    "dura": 0.3,
    "pituitary": 0.45,
}


def tissue_params(name: str, field_strength_t: float) -> TissueParams:
    """Return the values of tissue ``name`` at the tabulated field strength nearest to ``field_strength_t``.

    Raises
    ------
    KeyError
        When the tissue is unknown; the message lists the known tissues.
    """
    if name not in TISSUES:
        raise KeyError(f"Unknown tissue {name!r}. Known: {sorted(TISSUES)}")
    tissue = TISSUES[name]
    field = min(tissue.t1_ms, key=lambda b: abs(b - field_strength_t))
    return TissueParams(
        name=name,
        pd=tissue.pd,
        t1_ms=tissue.t1_ms[field],
        t2_ms=tissue.t2_ms[field],
        t2s_ms=tissue.t2s_ms[field],
        adc=tissue.adc,
        flow_void=tissue.flow_void,
        fat=tissue.fat,
    )
