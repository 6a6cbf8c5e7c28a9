"""The models a node holds: several model artifacts in its models folder, one active, some in shadow.

Layout of the models folder (``ModelsFolder``, by default ``<Home>/models``)::

    models/
      registry.json            which model is active, which run in shadow, and the history of changes
      <name>/model.json        a model artifact (card + safetensors weights), added by POST /lesion-ai/models
      <name>/model.safetensors
      <name>/shadow/...        results of its shadow runs (orthanc_plugin.models.shadow)

The name ``configured`` stands for the model of the node's settings (``Model``, else the packaged
default): it is active while no registered model was promoted, and promoting it again rolls back.

*Active*: the model new jobs are queued for (its identity is part of each job's key, so a promotion makes
the next studies run with the new model, and the results name it). *Shadow*: on every study a worker
processes, each shadow model runs too; its results are kept in the node (never stored into Orthanc nor
sent anywhere) and compared with the active model's and with the radiologists' labels
(:mod:`orthanc_plugin.models.shadow`). Every change (add, shadow on/off, promote) is recorded with who made it and
when.

This module is torch-free: the plugin inside Orthanc reads and writes the registry, workers read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from lesion_engine.errors import LesionAIError, ModelArtifactError
from lesion_engine.model.model_card import CARD_FILE, WEIGHTS_FILE, model_identity, read_any_card

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGURED",
    "MAX_UPLOAD_BYTES",
    "RESERVED_SUFFIXES",
    "ModelRegistry",
    "ModelTakenError",
    "RegisteredModel",
    "RegistryError",
    "RegistryFile",
    "RegistryState",
    "RegistryStateStore",
    "UnknownModelError",
]

#: The name of the model of the node's settings (``Model``, else the packaged default).
CONFIGURED = "configured"
REGISTRY_FILE = "registry.json"
#: Largest model upload (a zip of the artifact) the admin API accepts: an imported PI-CAI U-Net ensemble is
#: five folds of 127 MB (float32 weights, as published).
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
#: Files an uploaded artifact may hold (anything else is refused): the card, the weights, the human-readable
#: card and its plots.
_ALLOWED_FILES = re.compile(r"(?:model\.json|model\.safetensors|MODEL_CARD\.md|[A-Za-z0-9_-]{1,64}\.png)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Suffixes of the files the node keeps beside the models (the registry, its temporary and lock files,
#: history and logs): a model name never ends with one, so a model's folder can never take a file's place.
RESERVED_SUFFIXES = (".json", ".tmp", ".lock", ".log", ".partial")
#: History entries kept in the registry file.
_HISTORY_KEPT = 200


class RegistryError(LesionAIError, ValueError):
    """A request on the models cannot be done (unknown name, invalid upload, ...); the message says why."""


class UnknownModelError(RegistryError):
    """No model of that name."""


class ModelTakenError(RegistryError):
    """The name is taken, or the same model is on the node already under another name."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """``name`` if it can name a registered model (letters, digits, ``._-``, at most 64), else raise.

    Raises
    ------
    RegistryError
        The name is not allowed.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (CONFIGURED, "..", "."):
        raise RegistryError(
            f"invalid model name {str(name)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), and not {CONFIGURED!r}"
        )
    if name.lower().endswith(RESERVED_SUFFIXES):
        raise RegistryError(
            f"invalid model name {name!r}: a name may not end with {', '.join(RESERVED_SUFFIXES)} (the node's "
            f"own files beside the models, such as {REGISTRY_FILE}, use them)"
        )
    return name


@dataclass(frozen=True)
class RegistryState:
    """What ``registry.json`` holds.

    Attributes
    ----------
    active : str
        The active model's name (:data:`CONFIGURED` for the model of the node's settings).
    shadow : tuple of str
        Names of the models that run in shadow.
    history : tuple of dict
        Changes, oldest first: ``time``, ``user``, ``action`` (add, shadow-on, shadow-off, promote),
        ``model``, ``identity`` and, for a promotion, ``previous`` and ``previous_identity``.
    """

    active: str = CONFIGURED
    shadow: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = field(default=())

    @classmethod
    def from_json(cls, data: Any, where: str) -> RegistryState:
        """Read the registry file's JSON (validated; an invalid file is an error, never a silent reset)."""
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: expected a JSON object with active, shadow and history")
        active = data.get("active", CONFIGURED)
        shadow = data.get("shadow", [])
        history = data.get("history", [])
        if not isinstance(active, str) or (active != CONFIGURED and not _NAME.fullmatch(active)):
            raise RegistryError(f"{where}: 'active' must be a model name, got {active!r}")
        if not isinstance(shadow, list) or not all(isinstance(s, str) and _NAME.fullmatch(s) for s in shadow):
            raise RegistryError(f"{where}: 'shadow' must be a list of model names, got {shadow!r}")
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise RegistryError(f"{where}: 'history' must be a list of objects")
        return cls(active, tuple(shadow), tuple(history))

    def to_json(self) -> dict[str, Any]:
        """The registry file's JSON."""
        return {"active": self.active, "shadow": list(self.shadow), "history": list(self.history)}


@dataclass(frozen=True)
class RegisteredModel:
    """A model the node knows.

    Attributes
    ----------
    name : str
        Its name (:data:`CONFIGURED` for the model of the node's settings).
    path : str or None
        Its artifact folder (None: the packaged default, or a non-default processor).
    identity : str
        The identity jobs are keyed by (``name:version:sha256-prefix`` of its card).
    """

    name: str
    path: str | None
    identity: str


class RegistryStateStore(Protocol):
    """Where the registry's state (:class:`RegistryState` as JSON) is kept: ``registry.json`` of the models
    folder (:class:`RegistryFile`), or the cluster database
    (:class:`orthanc_plugin.cluster.registry_state.SharedRegistryState`)."""

    #: Where, for messages.
    where: str

    def read(self) -> str | None:
        """The stored JSON text; None when none was stored yet."""
        ...

    def write(self, text: str) -> None:
        """Store the JSON text (raises OSError or RuntimeError when it cannot)."""
        ...

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the registry's lock (one change at a time, across processes and servers)."""
        ...


class RegistryFile:
    """``registry.json`` of a models folder, changed under ``flock`` of ``.lock`` beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / REGISTRY_FILE
        self.where = f"the model registry {self.path}"

    def read(self) -> str | None:
        """The file's text; None when there is no file."""
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write(self, text: str) -> None:
        """Write the file atomically (a temporary file, then renamed)."""
        tmp = self.path.with_name(f".{REGISTRY_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``flock`` of the folder's ``.lock``."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class ModelRegistry:
    """The models folder (see the module docstring).

    Parameters
    ----------
    folder : Path
        The models folder (created when a model is added).
    configured : str or None
        The ``Model`` setting (None: the packaged default).
    processor : str or None
        The ``Processor`` setting (a non-default processor names the configured model's identity).
    identity_override : str or None
        The ``ModelIdentity`` setting (overrides the configured model's identity).
    state_store : RegistryStateStore, optional
        Where the state is kept (default: ``registry.json`` of ``folder``; the cluster database in cluster
        mode, with ``folder`` on shared storage).
    """

    def __init__(
        self,
        folder: Path,
        configured: str | None = None,
        processor: str | None = None,
        identity_override: str | None = None,
        state_store: RegistryStateStore | None = None,
    ) -> None:
        self.folder = folder
        self.state_store: RegistryStateStore = (
            state_store if state_store is not None else RegistryFile(folder)
        )
        self.configured = configured
        self.processor = processor
        self.identity_override = identity_override
        self._missing: set[tuple[str, str]] = set()

    # -- reading --------------------------------------------------------------------------------------
    @property
    def registry_file(self) -> Path:
        """The registry file."""
        return self.folder / REGISTRY_FILE

    def state(self) -> RegistryState:
        """The registry (defaults when there is no registry file yet).

        Raises
        ------
        RegistryError
            The registry file exists but cannot be read or is invalid (fix or remove it).
        """
        where = self.state_store.where
        try:
            text = self.state_store.read()
        except (OSError, RuntimeError) as exc:  # RuntimeError: the cluster database unreachable
            raise RegistryError(f"cannot read {where}: {exc}") from exc
        if text is None:
            return RegistryState()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"{where} is not JSON ({exc}); fix or remove it") from exc
        return RegistryState.from_json(data, where)

    def names(self) -> list[str]:
        """Names of the registered model folders (those holding a card), sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if p.is_dir() and _NAME.fullmatch(p.name) and (p / CARD_FILE).is_file()
        )

    def get(self, name: str) -> RegisteredModel:
        """The model called ``name``.

        Raises
        ------
        RegistryError
            No model of that name.
        """
        if name == CONFIGURED:
            identity = model_identity(self.configured, self.processor, self.identity_override)
            return RegisteredModel(CONFIGURED, self.configured, identity)
        check_name(name)
        folder = self.folder / name
        if not (folder / CARD_FILE).is_file():
            known = ", ".join([CONFIGURED, *self.names()])
            raise UnknownModelError(f"no model called {name!r}; known: {known}")
        return RegisteredModel(name, str(folder), model_identity(str(folder)))

    def active(self) -> RegisteredModel:
        """The active model (the configured one when the registered active model has disappeared: logged)."""
        state = self.state()
        try:
            return self.get(state.active)
        except RegistryError:
            self._report_missing("active", state.active, "using the configured model")
            return self.get(CONFIGURED)

    def shadows(self) -> list[RegisteredModel]:
        """The models in shadow (not the active one; missing ones are left out, logged)."""
        state = self.state()
        out = []
        for name in state.shadow:
            if name == state.active:
                continue
            try:
                out.append(self.get(name))
            except RegistryError:
                self._report_missing("shadow", name, "skipped")
        return out

    def _report_missing(self, role: str, name: str, outcome: str) -> None:
        """Log a missing model once (the registry is read at every study), not at every read."""
        if (role, name) not in self._missing:
            self._missing.add((role, name))
            logger.error("the %s model %r is missing from %s; %s", role, name, self.folder, outcome)

    def by_identity(self, identity: str) -> RegisteredModel | None:
        """The model whose identity is ``identity`` (the active one first), or None."""
        candidates = [self.active(), self.get(CONFIGURED), *(self.get(n) for n in self.names())]
        return next((m for m in candidates if m.identity == identity), None)

    # -- changing -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[RegistryState]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.state_store.locked())
            except RuntimeError as exc:  # the cluster database unreachable
                raise RegistryError(f"{self.state_store.where} cannot be locked: {exc}") from exc
            yield self.state()

    def _write(self, state: RegistryState) -> None:
        history = state.history[-_HISTORY_KEPT:]
        data = RegistryState(state.active, state.shadow, history).to_json()
        try:
            self.state_store.write(json.dumps(data, indent=2) + "\n")
        except (OSError, RuntimeError) as exc:
            raise RegistryError(f"cannot write {self.state_store.where}: {exc}") from exc

    def add_zip(self, name: str, data: bytes, user: str | None) -> RegisteredModel:
        """Register the artifact in a zip (its card and weights at the top level) as ``name``.

        The card is validated and the weights must match the card's ``weights_sha256``; nothing is kept
        when anything is wrong.

        Raises
        ------
        RegistryError
            Invalid name, name taken, too large, not a zip, unexpected files, invalid card or weights.
        """
        check_name(name)
        if len(data) > MAX_UPLOAD_BYTES:
            raise RegistryError(f"model upload of {len(data)} bytes is larger than {MAX_UPLOAD_BYTES}")
        archive, infos = _read_zip(data)
        with self._locked() as state:
            target = self.folder / name
            if target.exists():
                raise ModelTakenError(f"a model called {name!r} exists already; choose another name")
            staging = self.folder / f".upload-{name}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(mode=0o700)
            try:
                _extract(archive, infos, staging)
                _check_artifact(staging)
                identity = model_identity(str(staging))
                same = [m for m in (CONFIGURED, *self.names()) if self.get(m).identity == identity]
                if same:
                    raise ModelTakenError(
                        f"this model ({identity}) is on the node already, as {same[0]!r}: a copy could only "
                        "agree with itself"
                    )
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            model = self.get(name)
            entry = {"time": _now(), "user": user, "action": "add", "model": name, "identity": model.identity}
            self._write(RegistryState(state.active, state.shadow, (*state.history, entry)))
        logger.warning("model %s added (%s) by %s", name, model.identity, user or "unknown user")
        return model

    def set_shadow(self, name: str, enabled: bool, user: str | None) -> RegistryState:
        """Start or stop running ``name`` in shadow (recorded)."""
        model = self.get(name)
        with self._locked() as state:
            if enabled and name == state.active:
                raise RegistryError(f"{name!r} is the active model; only another model can run in shadow")
            shadow = tuple(s for s in state.shadow if s != name) + ((name,) if enabled else ())
            entry = {
                "time": _now(),
                "user": user,
                "action": "shadow-on" if enabled else "shadow-off",
                "model": name,
                "identity": model.identity,
            }
            new = RegistryState(state.active, shadow, (*state.history, entry))
            self._write(new)
        logger.warning("model %s: shadow %s by %s", name, "on" if enabled else "off", user or "unknown user")
        return new

    def promote(self, name: str, user: str | None) -> RegistryState:
        """Make ``name`` the active model (recorded with the model it replaces); it leaves the shadow list."""
        model = self.get(name)
        with self._locked() as state:
            previous = (
                self.get(state.active) if state.active == CONFIGURED or state.active in self.names() else None
            )
            entry = {
                "time": _now(),
                "user": user,
                "action": "promote",
                "model": name,
                "identity": model.identity,
                "previous": state.active,
                "previous_identity": previous.identity if previous is not None else None,
            }
            new = RegistryState(name, tuple(s for s in state.shadow if s != name), (*state.history, entry))
            self._write(new)
        logger.warning(
            "model %s (%s) promoted to active by %s, replacing %s",
            name,
            model.identity,
            user or "unknown user",
            state.active,
        )
        return new


#: Most entries an uploaded artifact zip may hold (the card, the weights, MODEL_CARD.md and a few plots).
MAX_ZIP_ENTRIES = 64


def _read_zip(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The entries of an uploaded artifact zip, checked (count, names, sizes, encryption, compression)
    before anything is written."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise RegistryError(
            f"the model upload is not a readable zip file; zip the artifact's {CARD_FILE} and {WEIGHTS_FILE}"
        ) from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise RegistryError(
            f"the model upload holds {len(infos)} entries; an artifact has at most {MAX_ZIP_ENTRIES}"
        )
    infos = [info for info in infos if not info.is_dir()]
    total = 0
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name != info.orig_filename:  # zipfile cuts a name at a NUL character
            raise RegistryError("the model upload holds an entry whose name contains a NUL character")
        if not _ALLOWED_FILES.fullmatch(name):
            raise RegistryError(
                f"unexpected file {name[:120]!r} in the model upload: only {CARD_FILE}, {WEIGHTS_FILE}, "
                "MODEL_CARD.md and .png plots, at the top level of the zip"
            )
        if name in seen:
            raise RegistryError(f"the model upload holds {name} twice; an artifact has each file once")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise RegistryError(f"{name} in the model upload is encrypted; upload the artifact unencrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise RegistryError(
                f"{name} in the model upload uses a compression method other than stored or deflate"
            )
        total += info.file_size
        if total > MAX_UPLOAD_BYTES:
            raise RegistryError(f"the model upload unpacks to more than {MAX_UPLOAD_BYTES} bytes")
    for required in (CARD_FILE, WEIGHTS_FILE):
        if required not in seen:
            raise RegistryError(f"the model upload has no {required} at the top level of the zip")
    return archive, infos


def _extract(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], folder: Path) -> None:
    """Write the checked entries into ``folder``, streamed (a model's weights can be hundreds of MB);
    each entry is read no further than its declared size."""
    for info in infos:
        written = 0
        try:
            with archive.open(info) as member, open(folder / info.filename, "wb") as out:
                while chunk := member.read(min(1 << 20, info.file_size + 1 - written)):
                    written += len(chunk)
                    if written > info.file_size:
                        break
                    out.write(chunk)
        except zipfile.BadZipFile:
            raise RegistryError(
                f"{info.filename} in the model upload is damaged (its CRC check fails)"
            ) from None
        except (zlib.error, EOFError, ValueError, RuntimeError, NotImplementedError):
            raise RegistryError(
                f"{info.filename} in the model upload is damaged (it cannot be decompressed)"
            ) from None
        if written != info.file_size:
            raise RegistryError(f"{info.filename} in the model upload is not the size its zip entry says")


def _check_artifact(folder: Path) -> None:
    try:
        card = read_any_card(folder)
    except ModelArtifactError as exc:
        # The node's folders are not the uploader's business: the message names the file only.
        message = str(exc).replace(f"{folder}{os.sep}", "")
        raise RegistryError(f"the uploaded model card is invalid: {message}") from None
    digest = hashlib.sha256()
    with open(folder / WEIGHTS_FILE, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != card.weights_sha256:
        raise RegistryError(
            f"the uploaded {WEIGHTS_FILE} (sha256 {digest.hexdigest()[:16]}...) is not the one its card names "
            f"({card.weights_sha256[:16]}...): upload the artifact as `lesion-ai train` or "
            "`lesion-ai models import` wrote it"
        )
