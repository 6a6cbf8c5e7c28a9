"""Is a radiologist's SEG a sound label? Checked from its header (Orthanc's simplified tags) and file size.

A SEG that a PACS or a viewer sends back can be malformed, by accident or on purpose: thousands of segments,
no frames, or a million frames declared over one frame of pixels. Recorded as a label, it would be the
study's newest label and ``lesion-ai dataset build --from-node`` would use it and skip the study. Such a SEG
is recorded as *refused*, with the reason (``GET /lesion-ai/labels`` lists it), and the build uses the
study's newest label that is not refused.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_LABEL_FRAMES", "MAX_LABEL_MATRIX", "MAX_LABEL_SEGMENTS", "label_problem"]

#: Most segments a label may have (a prostate's lesions, its gland and zones: a handful).
MAX_LABEL_SEGMENTS = 64
#: Most frames a label may have (slices x segments of one MR series: far fewer).
MAX_LABEL_FRAMES = 20_000
#: Largest Rows and Columns.
MAX_LABEL_MATRIX = 4096


def _int(tags: dict[str, Any], keyword: str) -> int | None:
    try:
        return int(str(tags.get(keyword, "")).strip())
    except ValueError:
        return None


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def label_problem(tags: dict[str, Any], file_size: int | None) -> str | None:
    """Why a SEG cannot be a label, or None when it can.

    Parameters
    ----------
    tags : dict
        The SEG's simplified tags, as Orthanc gives them (sequences as lists of objects).
    file_size : int or None
        Its file's size in bytes (None: unknown; the pixel data is then not checked against it).
    """
    segments = _items(tags.get("SegmentSequence"))
    if not segments:
        return "it has no segment (SegmentSequence is empty)"
    if len(segments) > MAX_LABEL_SEGMENTS:
        return f"it has {len(segments)} segments; a label may have at most {MAX_LABEL_SEGMENTS}"
    numbers = [_int(item, "SegmentNumber") for item in segments]
    if any(n is None or n < 1 for n in numbers) or len(set(numbers)) != len(numbers):
        return "its SegmentNumbers are not distinct positive numbers"
    frames = _int(tags, "NumberOfFrames")
    if frames is None or frames < 1:
        return f"it has no frame (NumberOfFrames {tags.get('NumberOfFrames')!r})"
    if frames > MAX_LABEL_FRAMES:
        return f"it declares {frames} frames; a label may have at most {MAX_LABEL_FRAMES}"
    rows, columns = _int(tags, "Rows"), _int(tags, "Columns")
    if (
        rows is None
        or columns is None
        or not (0 < rows <= MAX_LABEL_MATRIX and 0 < columns <= MAX_LABEL_MATRIX)
    ):
        return f"its frames are {tags.get('Rows')!r} x {tags.get('Columns')!r} pixels"
    bits = _int(tags, "BitsAllocated")
    if bits not in (1, 8):
        return f"BitsAllocated is {tags.get('BitsAllocated')!r}; a SEG has 1 (binary) or 8 (fractional)"
    pixel_bytes = (rows * columns * frames * bits + 7) // 8
    if file_size is not None and pixel_bytes > file_size:
        return (
            f"it declares {frames} frames of {rows} x {columns} pixels ({pixel_bytes} bytes of pixel data) "
            f"in a file of {file_size} bytes"
        )
    per_frame = tags.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:
        items = _items(per_frame)
        if len(items) != frames:
            return f"it has {len(items)} per-frame descriptions for {frames} frames"
        known = set(numbers)
        for index, item in enumerate(items, start=1):
            for identification in _items(item.get("SegmentIdentificationSequence")):
                number = _int(identification, "ReferencedSegmentNumber")
                if number not in known:
                    return f"frame {index} refers to segment {number}, which the SEG does not describe"
    return None
