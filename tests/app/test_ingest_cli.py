"""`gadsynth inspect` and `gadsynth to-nifti`: output, files written, and exit code 2 on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from app.ingest_cli import register
from tests.operators.dicom_factory import SeriesSpec, write_series

XA30 = "dcm_qa_xa30"


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """The two subcommands on a Typer app of their own (as `app.cli._register` adds them to `gadsynth`)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """GadSynth (test)."""

    register(app)
    return app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def t1_and_norm(real_dicom: Path, tmp_path: Path) -> Path:
    """Series 5 and its normalized copy 6 of the XA30 session, plus the Phoenix report (linked, not copied)."""
    study = tmp_path / "study"
    for name in ("5_anat-T1w_acq-tfl", "6_anat-T1w_acq-tfl", "99_Phoenix_Document"):
        (study / name).mkdir(parents=True)
        for source in (real_dicom / XA30 / "In" / name).iterdir():
            (study / name / source.name).symlink_to(source)
    return study


class TestInspect:
    """Each series with its number, description, role (or why none) and geometry."""

    def test_text(self, cli: typer.Typer, runner: CliRunner, t1_and_norm: Path) -> None:
        result = runner.invoke(cli, ["inspect", str(t1_and_norm)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        five = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#    5"))
        assert "t1_pre" in lines[five] and "128x128x96" in lines[five] and "2x2x2 mm" in lines[five]
        assert "SAGITTAL" in lines[five]
        six = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#    6"))
        assert "normalized copy of #5" in lines[six + 1]
        assert "Skipped 7 files" in result.stdout

    def test_json(self, cli: typer.Typer, runner: CliRunner, t1_and_norm: Path) -> None:
        result = runner.invoke(cli, ["inspect", str(t1_and_norm), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        by_number = {s["series_number"]: s for s in report["series"]}
        assert by_number[5]["role"] == "t1_pre" and by_number[6]["role"] is None
        assert by_number[5]["geometry"] == {
            "columns": 128,
            "rows": 128,
            "slices": 96,
            "volumes": 1,
            "pixel_spacing_mm": [2.0, 2.0],
            "slice_spacing_mm": 2.0,
            "orientation": "SAGITTAL",
            "acquisition": "3D",
        }
        assert report["roles"] == {"t1_pre": by_number[5]["series_instance_uid"]}
        assert len(report["skipped"]) == 7

    def test_empty_folder_exits_2(self, cli: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
        result = runner.invoke(cli, ["inspect", str(tmp_path)])
        assert result.exit_code == 2
        assert "error: No DICOM image found under" in result.output
        assert "Traceback" not in result.output

    def test_bad_rules_exit_2(self, cli: typer.Typer, runner: CliRunner, t1_and_norm: Path, tmp_path: Path) -> None:
        rules = tmp_path / "rules.json"
        rules.write_text('{"selections": []}')
        result = runner.invoke(cli, ["inspect", str(t1_and_norm), "--rules", str(rules)])
        assert result.exit_code == 2
        assert "error: Selection rules must be an object with a non-empty" in result.output


class TestToNifti:
    """One NIfTI per series, named from series number and description, geometry as dcm2niix writes it."""

    def test_study_folder(
        self, cli: typer.Typer, runner: CliRunner, t1_and_norm: Path, real_dicom: Path, tmp_path: Path
    ) -> None:
        out = tmp_path / "nifti"
        result = runner.invoke(cli, ["to-nifti", str(t1_and_norm), str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["5_anat-T1w_acq-tfl.nii.gz", "6_anat-T1w_acq-tfl.nii.gz"]
        ours = sitk.ReadImage(str(out / "5_anat-T1w_acq-tfl.nii.gz"))
        ref = sitk.ReadImage(str(real_dicom / XA30 / "Ref" / "5_anat-T1w_acq-tfl.nii"))
        ours = sitk.DICOMOrient(
            ours, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ref.GetDirection())
        )
        np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref).astype(np.float32))

    def test_series_folder_and_unbuildable_series(self, cli: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
        write_series(tmp_path / "in" / "a", SeriesSpec(series_number=3, description="T1 / sag"))
        paths = write_series(tmp_path / "in" / "b", SeriesSpec(series_number=4, description="gappy"))
        paths[5].unlink()
        result = runner.invoke(cli, ["to-nifti", str(tmp_path / "in"), str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["3_T1_sag.nii.gz"]
        assert "skipped #4 'gappy'" in result.output and "a slice is missing" in result.output.lower()

    def test_nothing_buildable_exits_2(
        self, cli: typer.Typer, runner: CliRunner, real_dicom: Path, tmp_path: Path
    ) -> None:
        shutil.copy(real_dicom / "dcm_qa_ts" / "In" / "1.dcm", tmp_path / "1.dcm")
        result = runner.invoke(cli, ["to-nifti", str(tmp_path), str(tmp_path / "out")])
        assert result.exit_code == 2
        assert "error: no series could be rebuilt as a 3D volume" in result.output
        assert "Traceback" not in result.output

    def test_not_dicom_exits_2(self, cli: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "readme.txt").write_text("hello")
        result = runner.invoke(cli, ["to-nifti", str(tmp_path / "in"), str(tmp_path / "out")])
        assert result.exit_code == 2
        assert "error: No DICOM image found under" in result.output and "skipped as not DICOM" in result.output


class TestRegistered:
    """`gadsynth` itself offers both subcommands."""

    def test_gadsynth_help(self, runner: CliRunner) -> None:
        pytest.importorskip("training.phantom.cli", reason="app.cli also needs the phantom subcommand")
        from app.cli import cli as gadsynth

        for command in ("inspect", "to-nifti"):
            result = runner.invoke(gadsynth, [command, "--help"])
            assert result.exit_code == 0, result.output
