/* The Models tab of the admin page (served at /lesion-ai/ui/, after app.js).
 *
 * The node's models (active, in shadow, only registered) with their agreement with the active model and
 * with the radiologists' labels, the radiologists' verdicts on their findings (read from the SRs saved in the
 * viewer), the buttons that start or stop a model's shadow runs and promote it, the
 * history of those changes, and the labels the node recorded (radiologists' SEGs), a page at a time.
 * Models are added with the command line (`lesion-ai models add`), not from this page.
 *
 * It uses the helpers of app.js (window.LesionAI): the DOM is built with createElement and textContent only,
 * and every request goes through api(), which sends the header X-Lesion-AI-Request: 1 with the requests that
 * change the node.
 */
"use strict";

(() => {
  const { $, el, api, query, fmtTime, fmtDate, plain, views } = window.LesionAI;
  const CONFIGURED = "configured";
  const LABELS_PER_PAGE = 25;
  const COLUMNS = 17;
  const VERDICTS = ["accepted", "rejected", "missed", "ppv"];

  /** The last answer of GET models (its active model is the one a promotion replaces). */
  let listing = null;
  /** Per model: the notes of its agreement report (only its full report has them), for the report computed. */
  const reportNotes = new Map();
  const labelsQuery = { limit: LABELS_PER_PAGE, offset: 0 };
  /** What the tables show (JSON), so that a refresh that brings nothing new leaves them (and their buttons)
   *  as they are. */
  const shown = { models: null, labels: null };

  /** A time as the registry and the labels write it (ISO 8601) as local YYYY-MM-DD HH:MM:SS. */
  function isoTime(text) {
    const ms = Date.parse(text);
    return isNaN(ms) ? plain(text) : fmtTime(ms / 1000);
  }

  function setMessage(kind, text) {
    const box = $("models-message");
    box.className = "message " + kind;
    box.textContent = text;
  }

  function emptyRow(columns, text) {
    return el("tr", {}, el("td", { colspan: columns, class: "empty", text }));
  }

  // -- the models ----------------------------------------------------------------------------------------
  const FIGURES = [
    ["with_active", "auroc"],
    ["with_active", "sensitivity_at_1_fp"],
    ["with_active", "same_patient_call"],
    ["with_labels", "studies"],
    ["with_labels", "auroc"],
    ["with_labels", "sensitivity_at_1_fp"],
  ];

  async function loadModels() {
    let answer;
    try {
      answer = await api("GET", "models");
    } catch (error) {
      $("models-active").textContent = "";
      $("models-table").tBodies[0].replaceChildren(emptyRow(COLUMNS, "The models cannot be read: " + error.message));
      shown.models = null;
      return;
    }
    const newNotes = await loadNotes(answer.models);
    listing = answer;
    const json = JSON.stringify(answer);
    if (json === shown.models && !newNotes) return;
    shown.models = json;
    renderModels(answer);
    renderHistory(answer.history);
  }

  function hasNull(agreement) {
    return FIGURES.some(([group, key]) => (agreement[group] || {})[key] === null || (agreement[group] || {})[key] === undefined);
  }

  /** Why figures are null: the notes of each model's full report (GET models/{name}), read again only when
   *  a new report was computed; true when some were read. */
  async function loadNotes(models) {
    const wanted = models.filter((m) => {
      if (!m.agreement || !hasNull(m.agreement)) return false;
      const known = reportNotes.get(m.name);
      return !known || known.computed !== m.agreement.computed;
    });
    await Promise.all(
      wanted.map(async (m) => {
        try {
          const full = await api("GET", "models/" + encodeURIComponent(m.name));
          const report = full.agreement || {};
          reportNotes.set(m.name, {
            computed: m.agreement.computed,
            with_active: ((report.with_active || {}).notes || []).join("; "),
            with_labels: (((report.with_labels || {}).shadow || {}).notes || []).join("; "),
          });
        } catch (error) {
          const text = "the report's notes cannot be read: " + error.message;
          reportNotes.set(m.name, { computed: null, with_active: text, with_labels: text });
        }
      }),
    );
    return wanted.length > 0;
  }

  function renderModels(answer) {
    const shadow = answer.models.filter((m) => m.status === "shadow").map((m) => m.name);
    $("models-active").textContent =
      "active: " + answer.active + " · in shadow: " + (shadow.join(", ") || "none") + " · " + answer.models.length + " model(s)";
    $("models-table").tBodies[0].replaceChildren(
      ...(answer.models.length ? answer.models.map(modelRow) : [emptyRow(COLUMNS, "no model")]),
    );
  }

  /** One figure of the agreement: n/a (with the report's note as its tooltip) where it is null. */
  function figureCell(model, group, key, first) {
    const cls = "num" + (first ? " sep" : "");
    const agreement = model.agreement;
    let why = null;
    if (agreement === undefined) why = "the model of the node's settings keeps no shadow runs";
    else if (agreement === null) why = "no agreement report yet: it is computed after the model's shadow runs";
    else {
      const value = (agreement[group] || {})[key];
      if (value !== null && value !== undefined) {
        const text = key === "studies" ? String(value) : Number(value).toFixed(2);
        return el("td", { class: cls, text, title: key === "studies" ? null : String(value) });
      }
      why = (reportNotes.get(model.name) || {})[group] || "not computed";
    }
    return el("td", { class: cls }, el("span", { class: "na", text: "n/a", title: why }));
  }

  /** One figure of the radiologists' verdicts on the model's findings (GET verdicts' summary). */
  function verdictCell(model, key, first) {
    const cls = "num" + (first ? " sep" : "");
    const figures = model.verdicts;
    if (!figures) {
      return el("td", { class: cls }, el("span", { class: "na", text: "—", title: "no radiologist's SR judged this model's findings yet" }));
    }
    const value = figures[key];
    if (value === null || value === undefined) {
      return el("td", { class: cls }, el("span", { class: "na", text: "n/a", title: "no finding accepted or rejected yet" }));
    }
    const text = key === "ppv" ? Number(value).toFixed(2) : String(value);
    return el("td", { class: cls, text, "data-verdict": key, title: key === "ppv" ? null : figures.studies + " stud" + (figures.studies === 1 ? "y" : "ies") });
  }

  /** The card's training data in a few words, and the whole of it for the tooltip. */
  function trainingData(data) {
    if (data === null || data === undefined) return ["—", null];
    const whole = typeof data === "object" ? JSON.stringify(data, null, 1) : String(data);
    let text = whole;
    if (typeof data === "object" && !Array.isArray(data)) {
      const named = ["kind", "description", "source", "name"].map((k) => data[k]).find((v) => typeof v === "string");
      const cases = data.train && typeof data.train.cases === "number" ? data.train.cases : data.cases;
      if (named) text = named + (typeof cases === "number" ? " · " + cases + " training cases" : "");
    }
    return text.length > 80 ? [text.slice(0, 79) + "…", whole] : [text, text === whole ? null : whole];
  }

  function modelRow(model) {
    const active = model.status === "active";
    const inShadow = model.status === "shadow";
    const configured = model.name === CONFIGURED;
    const training = trainingData(model.training_data);
    const shadowTitle = active
      ? "the active model cannot run in shadow"
      : configured
        ? "the model of the node's settings cannot run in shadow: register it under a name to compare it"
        : inShadow
          ? "stop running it on every study"
          : "run it on every study after the active model, keeping its results in the node";
    return el(
      "tr",
      { "data-model": model.name, class: active ? "current" : null },
      el("td", { class: "name" }, el("strong", { text: model.name }), el("code", { text: model.identity })),
      el("td", {}, el("span", { class: "state " + model.status, text: model.status })),
      el("td", { text: plain(model.version) }),
      el("td", { class: "time", text: model.created ? fmtDate(model.created) : "—", title: model.created || null }),
      el("td", { class: "training", text: training[0], title: training[1] }),
      el("td", { class: "num", text: model.shadow_studies ?? "—" }),
      FIGURES.map(([group, key], i) => figureCell(model, group, key, i === 0 || i === 3)),
      VERDICTS.map((key, i) => verdictCell(model, key, i === 0)),
      el("td", { class: "buttons sep" },
        el("button", {
          type: "button",
          "data-shadow": model.name,
          text: inShadow ? "Stop shadow" : "Start shadow",
          disabled: active || configured,
          title: shadowTitle,
          on: { click: () => setShadow(model, !inShadow) },
        }),
        el("button", {
          type: "button",
          class: "primary",
          "data-promote": model.name,
          text: "Promote",
          disabled: active,
          title: active ? "the active model" : "make it the active model: the next studies are analysed with it",
          on: { click: () => promote(model) },
        }),
      ),
    );
  }

  async function setShadow(model, enabled) {
    try {
      await api("POST", "models/" + encodeURIComponent(model.name) + "/shadow", { json: { enabled } });
      setMessage(
        "ok",
        enabled
          ? "Shadow runs of " + model.name + " start with the next job; its results stay in the node."
          : "Shadow runs of " + model.name + " stopped; what they kept stays.",
      );
    } catch (error) {
      setMessage("error", "Shadow runs of " + model.name + " not " + (enabled ? "started" : "stopped") + ": " + error.message);
    }
    await loadModels();
  }

  async function promote(model) {
    const previous = listing ? listing.active : "the active model";
    const question =
      "Promote " + model.name + " to the active model, replacing " + previous + "?\n\n" +
      "The next studies are analysed with " + model.name + "; jobs already queued keep their model. " +
      "Promoting " + previous + " again rolls back.";
    if (!window.confirm(question)) return;
    try {
      const answer = await api("POST", "models/" + encodeURIComponent(model.name) + "/promote");
      const replaced = (answer.recorded && answer.recorded.previous) || previous;
      setMessage("ok", model.name + " is the active model now (" + answer.identity + "), replacing " + replaced + ".");
    } catch (error) {
      setMessage("error", model.name + " not promoted: " + error.message);
    }
    await loadModels();
  }

  function renderHistory(history) {
    $("models-history").tBodies[0].replaceChildren(
      ...(history.length
        ? history.map((h) =>
            el("tr", {},
              el("td", { class: "time", text: isoTime(h.time) }),
              el("td", { text: h.user || "unknown" }),
              el("td", { text: h.action }),
              el("td", { text: h.model, title: h.identity || null }),
              el("td", { text: h.previous || "—", title: h.previous_identity || null }),
            ))
        : [emptyRow(5, "no change yet: the model of the node's settings is active")]),
    );
  }

  // -- the labels ----------------------------------------------------------------------------------------
  function segmentItem(segment) {
    const grades = [
      segment.isup !== null && segment.isup !== undefined ? "ISUP " + segment.isup : null,
      segment.pirads !== null && segment.pirads !== undefined ? "PI-RADS " + segment.pirads : null,
    ].filter(Boolean);
    return el("li", { title: segment.description || null },
      "#" + segment.number + " " + (segment.label || "(no label)") + " ",
      grades.length ? grades.map((g) => el("span", { class: "grade", text: g })) : el("span", { class: "grade none", text: "no grade" }),
    );
  }

  async function loadLabels() {
    let page;
    try {
      page = await api("GET", "labels" + query(labelsQuery));
    } catch (error) {
      $("labels-table").tBodies[0].replaceChildren(emptyRow(4, "The labels cannot be read: " + error.message));
      shown.labels = null;
      return;
    }
    const json = JSON.stringify(page);
    if (json === shown.labels) return;
    shown.labels = json;
    $("labels-table").tBodies[0].replaceChildren(
      ...(page.labels.length
        ? page.labels.map((label) =>
            el("tr", { "data-label": label.id },
              el("td", { class: "uid", text: label.study_instance_uid, title: label.study_instance_uid + " (Orthanc ID " + label.study + ")" }),
              el("td", {
                class: "uid",
                text: label.series_instance_uid,
                title: label.series_instance_uid + " · " + (label.series_description || "no description") + " · " + (label.manufacturer || "no manufacturer"),
              }),
              el("td", {}, el("ul", { class: "segments" }, label.segments.map(segmentItem))),
              el("td", { class: "time", text: isoTime(label.recorded_at) }),
            ))
        : [emptyRow(4, "no label yet: a radiologist's SEG stored into a study the node processed is recorded here")]),
    );
    $("labels-info").textContent = page.labels.length
      ? "labels " + (page.offset + 1) + "–" + (page.offset + page.labels.length) + " of " + page.total
      : "no labels";
    $("labels-prev").disabled = page.offset === 0;
    $("labels-next").disabled = !page.has_more;
  }

  // -- wiring --------------------------------------------------------------------------------------------
  function refresh() {
    loadModels();
    loadLabels();
  }

  $("models-reload").addEventListener("click", () => {
    $("models-message").className = "message hidden";
    refresh();
  });
  $("labels-prev").addEventListener("click", () => {
    labelsQuery.offset = Math.max(0, labelsQuery.offset - labelsQuery.limit);
    loadLabels();
  });
  $("labels-next").addEventListener("click", () => {
    labelsQuery.offset += labelsQuery.limit;
    loadLabels();
  });
  views.models = { show: refresh, tick: refresh };
})();
