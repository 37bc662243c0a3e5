"""Vendor flavour of the phantom's DICOM headers: equipment names, coils, study wording and contrast-agent codes."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from operators.roles import canonical_agent
from training.phantom.types import OutputFormat, Vendor

__all__ = [
    "AGENT_PRODUCTS",
    "BRAIN",
    "GADOLINIUM",
    "GADOLINIUM_MG_PER_MMOL",
    "INTRAVENOUS_ROUTE",
    "AgentProduct",
    "Code",
    "VendorProfile",
    "agent_product",
    "vendor_profile",
]

logger = logging.getLogger(__name__)

#: Molar mass of gadolinium (g/mol = mg/mmol): ContrastBolusIngredientConcentration is mg of ingredient per ml.
GADOLINIUM_MG_PER_MMOL = 157.25


@dataclass(frozen=True)
class Code:
    """One coded concept (DICOM Code Sequence Macro): value, scheme designator and meaning."""

    value: str
    scheme: str
    meaning: str


#: SNOMED CT codes used in every header (DICOM CID 4 anatomic region, CID 11 route, CID 13 ingredient).
BRAIN = Code("12738006", "SCT", "Brain")
INTRAVENOUS_ROUTE = Code("47625008", "SCT", "Intravenous route")
GADOLINIUM = Code("58281002", "SCT", "Gadolinium")


@dataclass(frozen=True)
class AgentProduct:
    """A marketed gadolinium-based contrast agent: brand name and its code from DICOM CID 12."""

    brand: str
    generic: str
    code: Code

    @property
    def label(self) -> str:
        """ContrastBolusAgent as radiographers type it: brand then generic name, e.g. "Gadovist (gadobutrol)"."""
        return f"{self.brand} ({self.generic})"


#: Keyed by the generic names of `operators.roles.AGENT_R1`; codes are SNOMED CT members of DICOM CID 12.
AGENT_PRODUCTS: dict[str, AgentProduct] = {
    "gadobutrol": AgentProduct("Gadovist", "gadobutrol", Code("407976008", "SCT", "Gadobutrol")),
    "gadoterate": AgentProduct("Dotarem", "gadoterate meglumine", Code("712714000", "SCT", "Gadoterate meglumine")),
    "gadopentetate": AgentProduct(
        "Magnevist", "gadopentetate dimeglumine", Code("109216000", "SCT", "Gadopentetate dimeglumine")
    ),
    "gadobenate": AgentProduct(
        "MultiHance", "gadobenate dimeglumine", Code("792865009", "SCT", "Gadobenate dimeglumine")
    ),
}


def agent_product(agent: str) -> AgentProduct:
    """Return the marketed product of a generic or brand agent name (any case).

    Raises
    ------
    KeyError
        When the agent is unknown; the message lists the known agents.
    """
    return AGENT_PRODUCTS[canonical_agent(agent)]


@dataclass(frozen=True)
class _Scanner:
    """The part of a `VendorProfile` that belongs to one scanner model and its software line."""

    manufacturer: str
    model: str
    software_versions: str
    station_name: str
    device_serial_number: str
    receive_coil: str


@dataclass(frozen=True)
class _HouseStyle:
    """The part of a `VendorProfile` that is the same on all of a vendor's scanners."""

    coil_elements: tuple[str, ...]
    coil_manufacturer: str
    study_description: str


@dataclass(frozen=True)
class VendorProfile(_HouseStyle, _Scanner):
    """Equipment and wording one vendor's scanner writes into every series of an exam: the scanner's fields,
    then the vendor's, then the parallel imaging factor."""

    parallel_factor: float


#: (scanner at 2 T and above, scanner below 2 T) of each software line; "siemens-xa" writes Enhanced MR.
_SCANNERS: dict[str, tuple[_Scanner, _Scanner]] = {
    "siemens-xa": (
        _Scanner("Siemens Healthineers", "MAGNETOM Prisma Fit", "syngo MR XA30", "AWP66012", "166012", "HeadNeck_64"),
        _Scanner("Siemens Healthineers", "MAGNETOM Sola", "syngo MR XA31", "AWP45170", "45170", "HeadNeck_20"),
    ),
    "siemens": (
        _Scanner("SIEMENS", "Prisma_fit", "syngo MR E11", "AWP66012", "166012", "HeadNeck_64"),
        _Scanner("SIEMENS", "Avanto_fit", "syngo MR E11", "AWP45170", "45170", "HeadNeck_20"),
    ),
    "ge": (
        _Scanner("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03_1831.b", "GEMRS750", "00000000750MR", "48HN"),
        _Scanner("GE MEDICAL SYSTEMS", "SIGNA Artist", "RX28.0_R04_2011.a", "GEHCARTIST", "00000000415MR", "HNU"),
    ),
    "philips": (
        _Scanner("Philips", "Ingenia Elition X", "5.7.1\\5.7.1.2", "PHILIPS-7K3GB5L", "45021", "dS_HeadNeck_32ch"),
        _Scanner(
            "Philips Medical Systems", "Ingenia", "5.4.1\\5.4.1.0", "PHILIPS-QT6M2R1", "42877", "dS_HeadNeck_20ch"
        ),
    ),
}
_HOUSE_STYLES: dict[str, _HouseStyle] = {
    "siemens": _HouseStyle(("HC1", "HC2", "HC3", "HC4", "HC5", "HC6", "HC7", "NC1"), "Siemens", "Neuro^Brain"),
    "ge": _HouseStyle(tuple(f"Head{i}" for i in range(1, 9)), "GE", "MR BRAIN WWO CONTRAST"),
    "philips": _HouseStyle(tuple(f"H{i}" for i in range(1, 9)), "Philips", "MR Brain w/wo contrast"),
}


def vendor_profile(vendor: Vendor, field_strength_t: float, output_format: OutputFormat) -> VendorProfile:
    """Equipment of a vendor's typical brain scanner at a field strength, for the era that writes `output_format`.

    Siemens scanners on syngo MR E11 (VE11) write classic MR Image Storage with Manufacturer "SIEMENS"; the XA
    software line writes Enhanced MR with Manufacturer "Siemens Healthineers" (as in the dcm2niix XA30 data).
    Philips writes "Philips Medical Systems" up to release 5.4 and "Philips" from 5.6 on; GE writes
    "GE MEDICAL SYSTEMS" throughout.

    Raises
    ------
    ValueError
        When the vendor is not one of "siemens", "ge", "philips".
    """
    if vendor not in _HOUSE_STYLES:
        raise ValueError(f"Unknown vendor flavour {vendor!r}. Expected one of 'siemens', 'ge', 'philips'.")
    line = "siemens-xa" if vendor == "siemens" and output_format == "enhanced" else vendor
    high_field, low_field = _SCANNERS[line]
    scanner = high_field if field_strength_t >= 2.0 else low_field
    return VendorProfile(**asdict(scanner), **asdict(_HOUSE_STYLES[vendor]), parallel_factor=2.0)
