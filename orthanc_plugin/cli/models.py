"""``lesion-ai models``: a node's models from the command line (the admin API's model routes).

* ``lesion-ai models list --node URL``: the models, which is active, which run in shadow, their agreement;
* ``lesion-ai models add ARTIFACT --name NAME --node URL [--shadow]``: register a trained model artifact
  (the folder ``lesion-ai train`` wrote), optionally starting its shadow runs;
* ``lesion-ai models shadow NAME --node URL [--off]``: start (stop) its shadow runs;
* ``lesion-ai models promote NAME --node URL``: make it the active model (``configured`` rolls back);
* ``lesion-ai models import picai-unet WEIGHTS_DIR --name NAME (--out ARTIFACT_DIR | --node URL)``: import
  the PI-CAI baseline U-Net's fold checkpoints (``unet_F0.pt`` ... ``unet_F4.pt``) as a model artifact
  (:mod:`lesion_engine.model.picai_unet.checkpoint`: read with ``torch.load(weights_only=True)`` only), written
  to a folder or registered on a node (then to shadow or promote like any other model);
* ``lesion-ai models import picai-nnunet MODEL_DIR --name NAME (--out ARTIFACT_DIR | --node URL)``: the same
  for the PI-CAI baseline nnU-Net (nnU-Net v1's ``plans.pkl`` and ``fold_<k>/model_best.model[.pkl]``),
  read by a restricted unpickler only (:mod:`lesion_engine.model.picai_nnunet.checkpoint`).

Credentials: HTTP Basic, ``--user`` and the password in :data:`PASSWORD_ENV` (or ``--password``). Answers are
printed as JSON; the exit status is 0 on success, 1 when the node refused (its message on stderr), 2 when
the node cannot be reached or the artifact cannot be read.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lesion_engine.errors import ModelArtifactError
from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, read_any_card
from orthanc_plugin.models.registry import MAX_UPLOAD_BYTES

__all__ = ["PASSWORD_ENV", "USER_ENV", "artifact_zip", "register"]

USER_ENV = "LESION_AI_NODE_USER"
PASSWORD_ENV = "LESION_AI_NODE_PASSWORD"  # noqa: S105 - the variable's name, not a password
#: Files of an artifact folder that are uploaded (as :mod:`orthanc_plugin.models.registry` accepts them).
_EXTRA = ("MODEL_CARD.md",)


def artifact_zip(folder: Path) -> bytes:
    """The artifact in ``folder`` (validated card) as the zip ``POST /lesion-ai/models`` takes.

    Raises
    ------
    ModelArtifactError
        The folder is not a valid model artifact.
    """
    read_any_card(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in (CARD_FILE, WEIGHTS_FILE, *_EXTRA):
            if (folder / name).is_file():
                archive.write(folder / name, name)
        for plot in sorted(folder.glob("*.png")):
            archive.write(plot, plot.name)
    return buffer.getvalue()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` sub-command."""
    parser = subparsers.add_parser(
        "models",
        help="a node's models: list, add a trained model, run it in shadow, promote it",
        description="Manage the models of a running node through its admin API (see the README, "
        f"'Put a model into service'). Credentials: --user and {PASSWORD_ENV} (or --password).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", required=True, help="the node's REST API, e.g. http://node:8142")
    common.add_argument("--user", default=os.environ.get(USER_ENV), help=f"user name (default: {USER_ENV})")
    common.add_argument("--password", help=f"password (default: {PASSWORD_ENV})")
    actions.add_parser("list", parents=[common], help="the models and their agreement reports")
    add = actions.add_parser("add", parents=[common], help="register a trained model artifact")
    add.add_argument("artifact", type=Path, help="the artifact folder (model.json, model.safetensors)")
    add.add_argument("--name", required=True, help="its name on the node (letters, digits, . _ -)")
    add.add_argument("--shadow", action="store_true", help="start its shadow runs at once")
    shadow = actions.add_parser("shadow", parents=[common], help="start (or --off: stop) shadow runs")
    shadow.add_argument("name")
    shadow.add_argument("--off", action="store_true")
    promote = actions.add_parser("promote", parents=[common], help="make a model the active one")
    promote.add_argument("name")
    _add_import(actions)
    parser.set_defaults(func=run)


def _add_import(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imported = actions.add_parser(
        "import",
        help="import published weights of another pipeline as a model artifact (picai-unet, picai-nnunet)",
        description="Import the PI-CAI baseline models' published fold checkpoints as a model artifact: into "
        "--out, or registered on --node. picai-unet: unet_F0.pt ... unet_F4.pt of the grand-challenge "
        "algorithm repository DIAGNijmegen/picai_unet_semi_supervised_gc_algorithm (fetched with git lfs), "
        "read with torch.load(weights_only=True) only. picai-nnunet: the nnU-Net model folder (plans.pkl, "
        "fold_<k>/model_best.model and .model.pkl) of DIAGNijmegen/picai_nnunet_semi_supervised_gc_algorithm "
        "(results/nnUNet/3d_fullres/Task2203_picai_baseline/<trainer>__nnUNetPlansv2.1; weights CC BY-NC-SA "
        "4.0, non-commercial), read by a restricted unpickler that allows numpy arrays and plain types only. "
        "A file that needs general unpickling is refused.",
    )
    imported.add_argument("source", choices=["picai-unet", "picai-nnunet"], help="what the weights are")
    imported.add_argument(
        "weights_dir",
        type=Path,
        help="picai-unet: the folder with unet_F0.pt ... unet_F4.pt; picai-nnunet: the nnU-Net model folder "
        "with plans.pkl and fold_0 ... fold_4",
    )
    imported.add_argument("--name", required=True, help="the model's name (letters, digits, . _ -)")
    imported.add_argument("--version", default="1", help="the model's version (default: 1)")
    imported.add_argument(
        "--folds", default="0,1,2,3,4", help="the folds to import, comma-separated (default: all five)"
    )
    imported.add_argument(
        "--crop-resampling",
        choices=["whole", "crop"],
        default="whole",
        help="picai-unet only. whole: each scan resampled whole, then cropped, as the reference (default); "
        "crop: only the crop (faster; a few voxels of integer series differ by 1, see the README)",
    )
    imported.add_argument(
        "--diffusion-resampling",
        choices=["reference", "direct"],
        default="reference",
        help="picai-unet only. reference: ADC and HBV onto their own grid, cropped, then onto the T2W crop "
        "(default); direct: straight onto the T2W crop (one interpolation instead of two)",
    )
    imported.add_argument(
        "--checkpoint",
        default="model_best",
        help="picai-nnunet only: the checkpoint's name in each fold folder (default: model_best, as the "
        "reference's process.py uses)",
    )
    where = imported.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the artifact into this folder")
    where.add_argument("--node", help="register the artifact on this node's REST API, e.g. http://node:8142")
    imported.add_argument("--user", default=os.environ.get(USER_ENV), help=f"user name (default: {USER_ENV})")
    imported.add_argument("--password", help=f"password (default: {PASSWORD_ENV})")
    imported.add_argument("--shadow", action="store_true", help="with --node: start its shadow runs at once")


def _parse_folds(text: str) -> list[int]:
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--folds must be comma-separated fold numbers, got {text!r}") from None
    if not folds:
        raise ValueError("--folds names no fold")
    return folds


def _import(args: argparse.Namespace) -> int:
    """``models import``: the artifact into --out, or through a temporary folder onto --node."""
    import tempfile

    from lesion_engine.model.picai_nnunet.checkpoint import import_picai_nnunet
    from lesion_engine.model.picai_unet.checkpoint import import_picai_unet
    from lesion_engine.model.picai_unet.config import PicaiPipeline

    try:
        folds = _parse_folds(args.folds)
    except ValueError as exc:
        sys.stderr.write(f"lesion-ai models import: {exc}\n")
        return 2
    nnunet = args.source == "picai-nnunet"
    if nnunet and (args.crop_resampling != "whole" or args.diffusion_resampling != "reference"):
        sys.stderr.write(
            "lesion-ai models import: --crop-resampling and --diffusion-resampling are settings of the "
            "picai-unet pipeline; the nnU-Net's preprocessing is nnU-Net's own\n"
        )
        return 2
    if not nnunet and args.checkpoint != "model_best":
        sys.stderr.write("lesion-ai models import: --checkpoint is a setting of picai-nnunet imports\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="lesion-ai-import-") as scratch:
        out = args.out if args.out is not None else Path(scratch) / args.name
        summary: dict[str, Any]
        try:
            if nnunet:
                nn_card = import_picai_nnunet(
                    args.weights_dir,
                    out,
                    name=args.name,
                    version=args.version,
                    folds=folds,
                    checkpoint=args.checkpoint,
                )
                summary = {
                    "name": nn_card.name,
                    "version": nn_card.version,
                    "kind": nn_card.kind,
                    "network": "picai-nnunet",
                    "folds": list(nn_card.architecture.folds),
                    "weights_sha256": nn_card.weights_sha256,
                    "checkpoints": nn_card.source.get("checkpoints", []),
                }
            else:
                pipeline = PicaiPipeline(
                    crop_resampling=args.crop_resampling, diffusion_resampling=args.diffusion_resampling
                )
                card = import_picai_unet(
                    args.weights_dir,
                    out,
                    name=args.name,
                    version=args.version,
                    folds=folds,
                    pipeline=pipeline,
                )
                summary = {
                    "name": card.name,
                    "version": card.version,
                    "kind": card.kind,
                    "network": "picai-unet",
                    "folds": list(card.architecture.folds),
                    "pipeline": {
                        "crop_resampling": card.pipeline.crop_resampling,
                        "diffusion_resampling": card.pipeline.diffusion_resampling,
                    },
                    "weights_sha256": card.weights_sha256,
                    "checkpoints": card.source.get("checkpoints", []),
                }
        except ModelArtifactError as exc:
            sys.stderr.write(f"lesion-ai models import: {exc}\n")
            return 1
        if args.out is not None:
            sys.stdout.write(json.dumps({**summary, "artifact": str(out)}, indent=2) + "\n")
            return 0
        args.artifact = out
        status = run(argparse.Namespace(**{**vars(args), "action": "add"}))
    return status


def run(args: argparse.Namespace) -> int:
    """Do the action; print the node's answers as JSON."""
    from orthanc_plugin.admin.routes import CSRF_HEADER, CSRF_VALUE
    from orthanc_plugin.node.orthanc_api import RestApiError
    from orthanc_plugin.worker.client import OrthancClient, OrthancUnavailableError

    if args.action == "import":
        return _import(args)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV)
    try:
        client = OrthancClient(args.node, args.user, password, headers={CSRF_HEADER: CSRF_VALUE})
    except ValueError as exc:
        sys.stderr.write(f"lesion-ai models: {exc}\n")
        return 2
    answers: list[Any] = []
    try:
        if args.action == "list":
            answers.append(client.get_json("/lesion-ai/models"))
        elif args.action == "add":
            data = artifact_zip(args.artifact)
            if len(data) > MAX_UPLOAD_BYTES:  # the node would refuse it from its headers (403)
                sys.stderr.write(
                    f"lesion-ai models: the artifact is {len(data)} bytes zipped; the node takes uploads of at "
                    f"most {MAX_UPLOAD_BYTES} bytes\n"
                )
                return 2
            answers.append(
                client.post_bytes(f"/lesion-ai/models/{quote(args.name, safe='')}", data, "application/zip")
            )
            if args.shadow:
                answers.append(_post(client, f"/lesion-ai/models/{quote(args.name, safe='')}/shadow", True))
        elif args.action == "shadow":
            answers.append(
                _post(client, f"/lesion-ai/models/{quote(args.name, safe='')}/shadow", not args.off)
            )
        else:
            answers.append(client.post_json(f"/lesion-ai/models/{quote(args.name, safe='')}/promote", {}))
    except (ModelArtifactError, OSError) as exc:
        sys.stderr.write(f"lesion-ai models: the artifact cannot be read: {exc}\n")
        return 2
    except OrthancUnavailableError as exc:
        sys.stderr.write(f"lesion-ai models: {exc}\n")
        return 2
    except RestApiError as exc:
        sys.stderr.write(f"lesion-ai models: the node refused: {exc}\n")
        return 1
    for answer in answers:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    return 0


def _post(client: Any, path: str, enabled: bool) -> Any:
    return client.post_json(path, {"enabled": enabled})
