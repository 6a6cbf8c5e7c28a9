"""The admin API's routes for the node's models (see :mod:`orthanc_plugin.models.registry` and
:mod:`orthanc_plugin.models.shadow`).

=======  ===============================  ========================================================
GET      models                           every model: active, in shadow or only registered; identity,
                                          card summary, shadow studies kept, agreement report; history
POST     models/{name}                    register a model: body = zip of its model.json and
                                          model.safetensors (``application/zip``), validated
GET      models/{name}                    one model, with its card and full agreement report
POST     models/{name}/shadow             ``{"enabled": true|false}``: start or stop its shadow runs
POST     models/{name}/promote            make it the active model (recorded; the next studies use it)
=======  ===============================  ========================================================

``configured`` names the model of the node's settings; promoting it rolls back to it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lesion_engine.model.model_card import stored_card
from orthanc_plugin.models.registry import (
    CONFIGURED,
    MAX_UPLOAD_BYTES,
    ModelRegistry,
    ModelTakenError,
    RegisteredModel,
    RegistryError,
    UnknownModelError,
)
from orthanc_plugin.models.shadow import ShadowStore

logger = logging.getLogger(__name__)

__all__ = ["MODEL_ROUTE", "ModelsRoutes"]

Answer = tuple[int, Any, str]
_JSON = "application/json"
#: ``models/{name}`` and ``models/{name}/{action}``.
MODEL_ROUTE = re.compile(r"^models/([^/]{1,200})(?:/(shadow|promote))?$")


def _error(status: int, message: str) -> Answer:
    return status, {"error": message}, _JSON


def _status(exc: RegistryError) -> int:
    """The HTTP status of a refused request on the models."""
    return 404 if isinstance(exc, UnknownModelError) else 409 if isinstance(exc, ModelTakenError) else 400


class ModelsRoutes:
    """Handlers of the model routes.

    Parameters
    ----------
    registry : ModelRegistry
        The node's models.
    verdict_summary : callable, optional
        Per ``name version`` of a model's card, the radiologists' verdicts on its findings
        (:meth:`orthanc_plugin.intake.verdicts.VerdictStore.summary`).
    """

    def __init__(
        self, registry: ModelRegistry, verdict_summary: Callable[[], dict[str, dict[str, Any]]] | None = None
    ) -> None:
        self.registry = registry
        self.verdict_summary = verdict_summary or dict

    def _describe(
        self,
        model: RegisteredModel,
        active: str,
        shadow: tuple[str, ...],
        full: bool,
        verdicts: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        card = stored_card(model.path)
        if verdicts is None:
            verdicts = self.verdict_summary()
        algorithm = f"{card.get('name')} {card.get('version')}" if card else None
        out: dict[str, Any] = {
            "name": model.name,
            "identity": model.identity,
            "status": "active"
            if model.name == active
            else "shadow"
            if model.name in shadow
            else "registered",
            "version": card.get("version") if card else None,
            "created": card.get("created") if card else None,
            "training_data": (card.get("training") or {}).get("data") if card else None,
            "verdicts": verdicts.get(algorithm) if algorithm else None,
        }
        if model.name != CONFIGURED and model.path is not None:
            store = ShadowStore(Path(model.path))
            report = store.report()
            out["shadow_studies"] = len(store.studies())
            out["agreement"] = report if full else _summary(report)
        if full:
            out["card"] = card
        return out

    def list_models(self) -> Answer:
        """``GET models``."""
        try:
            state = self.registry.state()
        except RegistryError as exc:
            return _error(500, str(exc))
        models = [self.registry.get(CONFIGURED)]
        verdicts = self.verdict_summary()
        for name in self.registry.names():
            try:
                models.append(self.registry.get(name))
            except RegistryError as exc:
                logger.warning("%s", exc)
        return (
            200,
            {
                "active": state.active,
                "models": [self._describe(m, state.active, state.shadow, False, verdicts) for m in models],
                "history": list(reversed(state.history))[:50],
            },
            _JSON,
        )

    def get_model(self, name: str) -> Answer:
        """``GET models/{name}``."""
        try:
            state = self.registry.state()
            model = self.registry.get(name)
        except RegistryError as exc:
            return _error(_status(exc), str(exc))
        verdicts = self.verdict_summary()
        out = self._describe(model, state.active, state.shadow, True, verdicts)
        if isinstance(out.get("agreement"), dict):
            out["agreement"] = {
                **out["agreement"],
                "active_verdicts": self._active_verdicts(state.active, verdicts),
            }
        return 200, out, _JSON

    def _active_verdicts(self, active: str, verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The radiologists' verdicts on the active model's findings, for a shadow model's report (a shadow
        model writes nothing into the studies, so only the active model is judged in the viewer)."""
        try:
            card = stored_card(self.registry.get(active).path)
        except RegistryError as exc:
            return {"model": active, "figures": None, "note": str(exc)}
        algorithm = f"{card.get('name')} {card.get('version')}" if card else None
        figures = verdicts.get(algorithm) if algorithm else None
        return {
            "model": active,
            "algorithm": algorithm,
            "figures": figures,
            **({} if figures else {"note": "no radiologist's SR judged the active model's findings yet"}),
        }

    def add(self, name: str, body: bytes, user: str | None) -> Answer:
        """``POST models/{name}`` with the artifact's zip as the body."""
        if not body:
            return _error(400, f"POST /lesion-ai/models/{name[:64]} needs the artifact's zip as the body")
        if len(body) > MAX_UPLOAD_BYTES:
            return _error(413, f"the model upload is larger than {MAX_UPLOAD_BYTES} bytes")
        try:
            model = self.registry.add_zip(name, body, user)
        except RegistryError as exc:
            return _error(_status(exc), str(exc))
        return 201, {"name": model.name, "identity": model.identity, "status": "registered"}, _JSON

    def shadow(self, name: str, body: bytes, user: str | None) -> Answer:
        """``POST models/{name}/shadow`` with ``{"enabled": true|false}``."""
        try:
            data = json.loads(body.decode("utf-8")) if body.strip() else {"enabled": True}
        except (UnicodeDecodeError, ValueError) as exc:
            return _error(400, f'the body must be JSON {{"enabled": true|false}}: {exc}')
        enabled = data.get("enabled") if isinstance(data, dict) else None
        if not isinstance(enabled, bool):
            return _error(400, f'the body must be JSON {{"enabled": true|false}}, got {str(data)[:100]}')
        try:
            state = self.registry.set_shadow(name, enabled, user)
        except RegistryError as exc:
            return _error(_status(exc), str(exc))
        return 200, {"name": name, "shadow": list(state.shadow), "active": state.active}, _JSON

    def promote(self, name: str, user: str | None) -> Answer:
        """``POST models/{name}/promote``."""
        try:
            state = self.registry.promote(name, user)
        except RegistryError as exc:
            return _error(_status(exc), str(exc))
        return (
            200,
            {
                "active": state.active,
                "identity": self.registry.active().identity,
                "recorded": state.history[-1],
            },
            _JSON,
        )


def _summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline figures of an agreement report."""
    if report is None:
        return None
    active = report.get("with_active") or {}
    labels = (report.get("with_labels") or {}).get("shadow") or {}
    return {
        "computed": report.get("computed"),
        "studies": report.get("studies"),
        "with_active": {k: active.get(k) for k in ("auroc", "sensitivity_at_1_fp", "same_patient_call")},
        "with_labels": {k: labels.get(k) for k in ("studies", "auroc", "sensitivity_at_1_fp")},
    }
