"""Vendor flavour of the phantom's DICOM headers: equipment names, coils, study wording and contrast-agent codes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
class VendorProfile:
    """Equipment and wording one vendor's scanner writes into every series of an exam."""

    manufacturer: str
    model: str
    software_versions: str
    station_name: str
    device_serial_number: str
    receive_coil: str
    coil_elements: tuple[str, ...]
    coil_manufacturer: str
    study_description: str
    parallel_factor: float


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
    high_field = field_strength_t >= 2.0
    enhanced = output_format == "enhanced"
    if vendor == "siemens":
        if enhanced:
            manufacturer = "Siemens Healthineers"
            model, software = (
                ("MAGNETOM Prisma Fit", "syngo MR XA30") if high_field else ("MAGNETOM Sola", "syngo MR XA31")
            )
        else:
            manufacturer = "SIEMENS"
            model, software = ("Prisma_fit", "syngo MR E11") if high_field else ("Avanto_fit", "syngo MR E11")
        return VendorProfile(
            manufacturer=manufacturer,
            model=model,
            software_versions=software,
            station_name="AWP66012" if high_field else "AWP45170",
            device_serial_number="166012" if high_field else "45170",
            receive_coil="HeadNeck_64" if high_field else "HeadNeck_20",
            coil_elements=("HC1", "HC2", "HC3", "HC4", "HC5", "HC6", "HC7", "NC1"),
            coil_manufacturer="Siemens",
            study_description="Neuro^Brain",
            parallel_factor=2.0,
        )
    if vendor == "ge":
        return VendorProfile(
            manufacturer="GE MEDICAL SYSTEMS",
            model="DISCOVERY MR750" if high_field else "SIGNA Artist",
            software_versions="DV26.0_R03_1831.b" if high_field else "RX28.0_R04_2011.a",
            station_name="GEMRS750" if high_field else "GEHCARTIST",
            device_serial_number="00000000750MR" if high_field else "00000000415MR",
            receive_coil="48HN" if high_field else "HNU",
            coil_elements=tuple(f"Head{i}" for i in range(1, 9)),
            coil_manufacturer="GE",
            study_description="MR BRAIN WWO CONTRAST",
            parallel_factor=2.0,
        )
    if vendor == "philips":
        return VendorProfile(
            manufacturer="Philips" if high_field else "Philips Medical Systems",
            model="Ingenia Elition X" if high_field else "Ingenia",
            software_versions="5.7.1\\5.7.1.2" if high_field else "5.4.1\\5.4.1.0",
            station_name="PHILIPS-7K3GB5L" if high_field else "PHILIPS-QT6M2R1",
            device_serial_number="45021" if high_field else "42877",
            receive_coil="dS_HeadNeck_32ch" if high_field else "dS_HeadNeck_20ch",
            coil_elements=tuple(f"H{i}" for i in range(1, 9)),
            coil_manufacturer="Philips",
            study_description="MR Brain w/wo contrast",
            parallel_factor=2.0,
        )
    raise ValueError(f"Unknown vendor flavour {vendor!r}. Expected one of 'siemens', 'ge', 'philips'.")
