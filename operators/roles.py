"""Series roles and contrast-agent physics shared by the phantom, the selector, normalization and the models."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AGENT_ALIASES",
    "AGENT_CONCENTRATION",
    "AGENT_R1",
    "QUANTITATIVE_SCALE",
    "STANDARD_DOSE_MMOL_PER_KG",
    "Role",
    "canonical_agent",
    "dose_from_volume",
    "relaxivity",
]

#: Quantitative maps are divided by a fixed physical constant, never by the study's own statistics (METHODS.md 5:
#: quantitative T1 maps need no intensity normalization): T1 in ms / 4000 puts white matter near 0.2-0.3, grey
#: matter near 0.3-0.45 and CSF near 1.1, at 1.5 T and 3 T alike.
QUANTITATIVE_SCALE: dict[str, float] = {"t1_map": 4000.0}


class Role(StrEnum):
    """What a series is for in the pipeline."""

    T1_PRE = "t1_pre"
    T1_LOW_DOSE = "t1_low_dose"
    T1_STANDARD_DOSE = "t1_standard_dose"
    T2 = "t2"
    FLAIR = "flair"
    ADC = "adc"
    T1_MAP = "t1_map"


#: Longitudinal relaxivity r1 in 1/(mM*s) in plasma at 37 C, by agent and field strength (tesla).
#: Gadobutrol and gadoterate are the values used in Pinetz et al. (seed 003); the others are from
#: Rohrer et al., Invest Radiol 2005 and Szomolanyi et al., Invest Radiol 2019.
AGENT_R1: dict[str, dict[float, float]] = {
    "gadobutrol": {1.5: 4.6, 3.0: 4.5},
    "gadoterate": {1.5: 3.9, 3.0: 3.4},
    "gadopentetate": {1.5: 4.1, 3.0: 3.7},
    "gadobenate": {1.5: 6.3, 3.0: 5.5},
}

#: Brand and generic names found in ContrastBolusAgent, lower-case, mapped to the keys of AGENT_R1.
AGENT_ALIASES: dict[str, str] = {
    "gadovist": "gadobutrol",
    "gadavist": "gadobutrol",
    "gadobutrol": "gadobutrol",
    "dotarem": "gadoterate",
    "clariscan": "gadoterate",
    "gadoterate": "gadoterate",
    "gadoterate meglumine": "gadoterate",
    "magnevist": "gadopentetate",
    "gadopentetate": "gadopentetate",
    "multihance": "gadobenate",
    "gadobenate": "gadobenate",
}


#: Gadolinium concentration of the marketed formulation, mmol/ml (gadobutrol is the only 1.0 M agent).
AGENT_CONCENTRATION: dict[str, float] = {
    "gadobutrol": 1.0,
    "gadoterate": 0.5,
    "gadopentetate": 0.5,
    "gadobenate": 0.5,
}

#: The standard dose of every agent above: 0.1 mmol per kg body weight (relative dose 1.0).
STANDARD_DOSE_MMOL_PER_KG = 0.1


def canonical_agent(agent: str) -> str:
    """Map a brand or generic name (any case) to the generic name used as key in the tables.

    Raises
    ------
    KeyError
        When the agent is unknown; the message lists the known names.
    """
    key = AGENT_ALIASES.get(agent.strip().lower(), agent.strip().lower())
    if key not in AGENT_R1:
        raise KeyError(f"Unknown contrast agent {agent!r}. Known: {sorted(AGENT_ALIASES)}")
    return key


def dose_from_volume(volume_ml: float, weight_kg: float, agent: str) -> float:
    """Relative dose (standard = 1.0) from an injected volume, the patient's weight and the agent.

    Raises
    ------
    KeyError
        When the agent is unknown.
    ValueError
        When the weight is not positive.
    """
    if weight_kg <= 0:
        raise ValueError(f"Patient weight must be positive to compute a dose. Found {weight_kg} kg.")
    mmol = volume_ml * AGENT_CONCENTRATION[canonical_agent(agent)]
    return mmol / (STANDARD_DOSE_MMOL_PER_KG * weight_kg)


def relaxivity(agent: str, field_strength_t: float) -> float:
    """Return r1 (1/(mM*s)) for an agent at the nearest tabulated field strength.

    Raises
    ------
    KeyError
        When the agent is unknown; the message lists the known agents.
    """
    table = AGENT_R1[canonical_agent(agent)]
    nearest = min(table, key=lambda b: abs(b - field_strength_t))
    return table[nearest]
