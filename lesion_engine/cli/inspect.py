"""``lesion-ai inspect``: the series table of a study, the chosen roles and why."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lesion_engine.errors import LesionAIError, StudyError
from lesion_engine.intake.preprocess import prepare_study
from lesion_engine.intake.series_rules import load_series_rules

logger = logging.getLogger(__name__)

__all__ = ["format_table", "register", "run"]

EXIT_OK = 0
EXIT_UNUSABLE = 1
EXIT_USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``inspect`` sub-command."""
    parser = subparsers.add_parser(
        "inspect",
        help="show a study's series, the chosen T2W/ADC/HBV roles and why",
        description="Read a DICOM study, classify its series and choose the T2W, ADC and high b-value "
        "series, as the engine would. Exit status 0 when the study is usable, 1 when it is not (with the "
        "reason), 2 on bad arguments.",
    )
    parser.add_argument(
        "dicom_dir", type=Path, help="folder holding the study's DICOM files (searched recursively)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--rules", type=Path, help="site series-rules YAML overriding the defaults")
    parser.set_defaults(func=run)


def _fmt_b(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values) if values else "-"


def format_table(report: dict[str, Any]) -> str:
    """Render the series table and roles of a report as text."""
    header = ("#", "description", "vendor", "b-values", "geometry", "plane", "role", "why")
    rows = []
    for row in report["series"]:
        spacing = row["pixel_spacing"]
        geometry = f"{row['columns']}x{row['rows']}x{row['slices']}" + (
            f" @{spacing[1]:g}x{spacing[0]:g}" if spacing else ""
        )
        role = row["role"] or (f"({row['ignored']})" if row["ignored"] else "-")
        rows.append(
            (
                str(row["series_number"]),
                row["description"][:36],
                (row["manufacturer"] or "-")[:12],
                _fmt_b(row["b_values"]),
                geometry,
                row["plane"] or "-",
                role,
                row["reason"],
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths, strict=True)) + "  " + header[-1]]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    lines.append("")
    for name, role in report["roles"].items():
        b = f" b={role['b_value']:g}" if role.get("b_value") is not None else ""
        computed = " (computed)" if role.get("computed") else ""
        lines.append(f"{name}: series {role['series_number']}{b}{computed} {role['series_instance_uid']}")
        for alternative in role.get("alternatives", []):
            lines.append(f"    alternative: {alternative}")
    for entry in report["skipped_instances"]:
        lines.append(f"skipped: {entry['source']}: {entry['reason']}")
    if report["ignored_objects"]:
        lines.append(f"ignored non-image objects: {len(report['ignored_objects'])}")
    for warning in report["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``inspect`` and return the exit status."""
    try:
        rules = load_series_rules(args.rules) if args.rules else None
        if not args.dicom_dir.is_dir():
            sys.stderr.write(f"lesion-ai inspect: {args.dicom_dir} is not a folder\n")
            return EXIT_USAGE
        prepared = prepare_study(args.dicom_dir, rules)
    except StudyError as exc:
        report = dict(exc.report or {})
        report.update({"usable": False, "error": {"type": type(exc).__name__, "message": str(exc)}})
        if args.json:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
        elif exc.report:
            sys.stdout.write(format_table(report))
        sys.stderr.write(f"lesion-ai inspect: study not usable: {type(exc).__name__}: {exc}\n")
        return EXIT_UNUSABLE
    except LesionAIError as exc:
        sys.stderr.write(f"lesion-ai inspect: {type(exc).__name__}: {exc}\n")
        return EXIT_USAGE
    report = prepared.report()
    report.update({"usable": True, "error": None})
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(report))
    return EXIT_OK
