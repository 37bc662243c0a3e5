"""The node's settings (callers, destinations, TLS files) and what it reads from an instance (identity, our own
output), on real phantom files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import Dataset, dcmread

from app.dicom_node.config import AllowedCaller, Destination, address_matches
from app.dicom_node.instances import InstanceFacts, own_output_reason, read_facts
from app.dicom_node.scp import allowed_callers
from app.service.settings import ServiceSettings
from tests.dicom_node.node import dicom_files
from training.phantom import PhantomStudy

OURS = (9001, 9005)


class TestSettings:
    def test_callers_match_ae_title_and_host(self) -> None:
        caller = AllowedCaller(ae_title="PACS ", host="10.1.0.0/16")
        assert caller.ae_title == "PACS"
        assert caller.matches("PACS", "10.1.2.3")
        assert not caller.matches("PACS", "10.2.0.1") and not caller.matches("OTHER", "10.1.2.3")
        assert address_matches("localhost", "127.0.0.1")
        assert not address_matches("127.0.0.1", "not an address")

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ({"name": "p", "ae_title": "PACS", "host": "h"}, r"needs port"),
            ({"name": "p", "ae_title": "A\\B", "host": "h", "port": 104}, r"without a backslash"),
            ({"name": "p", "ae_title": "A" * 17, "host": "h", "port": 104}, r"1 to 16"),
            ({"name": "w", "kind": "dicomweb", "url": "ftp://x"}, r"needs url http\(s\)"),
            ({"name": "w", "kind": "dicomweb", "url": "http://x", "username": "u", "token": "t"}, r"not both"),
            ({"name": "bad name!", "ae_title": "A", "host": "h", "port": 1}, r"name"),
        ],
    )
    def test_bad_destinations_are_refused(self, entry: dict, message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            Destination.model_validate(entry)

    def test_service_settings_check_the_node(self, tmp_path: Path) -> None:
        destination = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}
        with pytest.raises(ValidationError, match="each name once"):
            ServiceSettings(dicom_destinations=[destination, destination])
        with pytest.raises(ValidationError, match="go together"):
            ServiceSettings(dicom_tls_cert=tmp_path / "cert.pem")
        with pytest.raises(ValidationError, match="is not a file"):
            ServiceSettings(dicom_tls_cert=tmp_path / "cert.pem", dicom_tls_key=tmp_path / "key.pem")
        settings = ServiceSettings(dicom_destinations=[destination], dicom_allowed_callers=[])
        assert [(c.ae_title, c.host) for c in allowed_callers(settings)] == [("PACS", "10.0.0.5")]
        assert settings.dicom_bind_host == settings.host

    def test_secrets_stay_out_of_descriptions(self) -> None:
        web = Destination(name="w", kind="dicomweb", url="https://pacs/dicom-web", username="u", password="s3cret")
        assert "s3cret" not in web.describe() + repr(web)


class TestInstances:
    @pytest.fixture
    def dataset(self, phantoms: list[PhantomStudy]) -> Dataset:
        return dcmread(dicom_files(phantoms[0].dicom_dir)[0])

    def _facts(self, dataset: Dataset) -> InstanceFacts:
        facts = read_facts(dataset)
        assert isinstance(facts, InstanceFacts)
        return facts

    def test_an_acquired_image_is_not_ours(self, dataset: Dataset) -> None:
        facts = self._facts(dataset)
        assert facts.routed and facts.modality == "MR"
        assert own_output_reason(dataset, facts, OURS) is None

    def test_each_mark_of_our_output_is_recognised(self, dataset: Dataset) -> None:
        dataset.ImageType = ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]
        assert own_output_reason(dataset, self._facts(dataset), OURS) == "ImageType holds SYNTHETIC"
        dataset.ImageType = ["DERIVED", "PRIMARY"]
        dataset.Manufacturer = "GadSynth"
        assert own_output_reason(dataset, self._facts(dataset), OURS) == "Manufacturer is GadSynth"
        dataset.Manufacturer = "SIEMENS"
        item = Dataset()
        item.Manufacturer = "GadSynth"
        dataset.ContributingEquipmentSequence = [item]
        assert own_output_reason(dataset, self._facts(dataset), OURS) == "Contributing Equipment names GadSynth"
        del dataset.ContributingEquipmentSequence
        dataset.SeriesNumber = 9003
        assert "numbered 9003" in (own_output_reason(dataset, self._facts(dataset), OURS) or "")

    def test_an_original_series_with_our_number_is_still_taken(self, dataset: Dataset) -> None:
        dataset.SeriesNumber = 9001
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert own_output_reason(dataset, self._facts(dataset), OURS) is None

    def test_a_missing_uid_says_which(self, dataset: Dataset) -> None:
        del dataset.SeriesInstanceUID
        assert read_facts(dataset) == "no valid SeriesInstanceUID"
