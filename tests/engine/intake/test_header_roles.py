"""Series roles from headers alone: candidates per role, preferred first, and unreadable series."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lesion_engine.intake.header_roles import UNREADABLE, SeriesHeaders, classify_headers, rank_roles

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]


def _headers(
    description: str, number: int, orientation: list[float], images: int = 3
) -> list[tuple[str, Dataset]]:
    series_uid = generate_uid()
    out = []
    for index in range(images):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "MR"
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        ds.SeriesDate, ds.SeriesTime = "20240101", f"{100000 + number:06d}"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ImagePositionPatient = [0.0, 0.0, float(index * 3)]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = [0.5, 0.5]
        ds.Rows = ds.Columns = 8
        out.append((f"{description}-{index}", ds))
    return out


def _series(key: str, headers: list[tuple[str, Dataset]]) -> SeriesHeaders[str]:
    return SeriesHeaders(key, str(headers[0][1].SeriesInstanceUID) if headers else "1.2.3", headers)


def test_candidates_are_ranked_by_the_documented_preference() -> None:
    ranked = rank_roles(
        [
            _series("first t2", _headers("t2_tse_tra", 3, AXIAL)),
            _series("repeated t2", _headers("t2_tse_tra", 7, AXIAL)),
            _series("sagittal t2", _headers("t2_tse_sag", 4, SAGITTAL)),
            _series("adc", _headers("ep2d_diff_tra_ADC", 9, AXIAL)),
            _series("nothing readable", []),
        ]
    )
    assert [key for key, _ in ranked.t2w] == ["repeated t2", "first t2"]  # the later acquisition first
    assert [key for key, _ in ranked.adc] == ["adc"]
    verdicts = dict(ranked.verdicts)
    assert list(verdicts) == ["first t2", "repeated t2", "sagittal t2", "adc", "nothing readable"]
    assert verdicts["sagittal t2"].ignored == "t2_sagittal" and not verdicts["sagittal t2"].candidate_for
    assert verdicts["nothing readable"].ignored == UNREADABLE and verdicts["nothing readable"].series is None
    assert verdicts["first t2"].candidate_for == {"t2w"} and verdicts["first t2"].reasons


def test_one_header_is_enough_for_what_headers_decide() -> None:
    first = _headers("DCE_tra", 5, AXIAL, images=1)
    verdict = classify_headers(str(first[0][1].SeriesInstanceUID), first)
    assert verdict.ignored == "dce" and verdict.series is not None and len(verdict.series.instances) == 1
    unreadable = classify_headers("1.2.3", [("broken", Dataset())])  # no image attributes at all
    assert unreadable.ignored == UNREADABLE and "malformed image header" in unreadable.reasons[0]
