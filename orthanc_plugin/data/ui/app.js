/* The admin page of the lesion AI node (served at /lesion-ai/ui/).
 *
 * Plain JavaScript, no framework and no build step. Everything shown comes from the admin REST API of the
 * node (/lesion-ai/...), on the same origin and with the same credentials. The DOM is built with
 * createElement and textContent only (never innerHTML), so that a rule's text or a DICOM value is shown as
 * text whatever it holds. Requests that change the node carry the header X-Lesion-AI-Request: 1.
 */
"use strict";

(() => {
  // The node's root, in case a reverse proxy serves it below a prefix.
  const ROOT = location.pathname.replace(/\/lesion-ai\/ui(\/.*)?$/, "");
  const API = ROOT + "/lesion-ai/";
  const CSRF_HEADER = "X-Lesion-AI-Request";
  const REFRESH_MS = 5000;
  const STATES = ["queued", "running", "done", "failed"];

  // -- DOM helpers -------------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  /** An element with properties ({class, text, href, on: {event: handler}, other attributes}) and
   *  children (nodes, or strings added as text). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "href") node.href = value;
      else if (key === "on") for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function facts(target, rows) {
    target.replaceChildren();
    for (const [label, value] of rows) {
      if (value === undefined) continue;
      target.append(el("dt", { text: label }), el("dd", {}, value === null || value === "" ? "—" : value));
    }
  }

  function stateBadge(state) {
    return el("span", { class: "state " + (STATES.includes(state) ? state : ""), text: state });
  }

  const pad = (n) => String(n).padStart(2, "0");

  /** A time (seconds since the epoch) as local YYYY-MM-DD HH:MM:SS. */
  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  /** A time for a table cell: the time of day when it is today, else the date and the minute. */
  function fmtShort(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const d = new Date(seconds * 1000);
    const now = new Date();
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === now.toDateString()) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time.slice(0, 5);
  }

  function fmtDate(text) {
    const d = new Date(text);
    return isNaN(d.getTime()) ? text : d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    const hours = Math.floor(seconds / 3600);
    if (hours < 48) return hours + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function plain(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function showBanner(text) {
    const banner = $("banner");
    banner.textContent = text;
    banner.classList.remove("hidden");
  }

  function hideBanner() {
    $("banner").classList.add("hidden");
  }

  // -- the API -----------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, status, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  /** One request to the admin API; JSON answers decoded; an error answer raises ApiError. */
  async function api(method, path, options) {
    const opts = options || {};
    const headers = { Accept: "application/json" };
    let body;
    if (method !== "GET") headers[CSRF_HEADER] = "1";
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["Content-Type"] = "application/json";
    } else if (opts.text !== undefined) {
      body = opts.text;
      headers["Content-Type"] = "text/plain; charset=utf-8";
    }
    let response;
    // From the page's origin, never from its address as typed: fetch refuses a URL that carries a user and
    // password (http://user:pass@node/...), which a relative path would inherit.
    const url = new URL(API + path, location.origin).href;
    try {
      response = await fetch(url, { method, headers, body, credentials: "same-origin", cache: "no-store" });
    } catch (error) {
      const reason = navigator.onLine === false ? "this computer is offline" : "no answer from " + location.origin;
      throw new ApiError("the node cannot be reached (" + reason + ": " + error.message + ")", 0, null);
    }
    const raw = await response.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch (error) {
      data = { error: raw };
    }
    if (!response.ok) {
      const message = (data && (data.error || data.Message || data.Details)) || "HTTP " + response.status;
      if (response.status === 401) showBanner("Not logged in: reload the page and enter the node's user and password.");
      throw new ApiError(message, response.status, data);
    }
    return data;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value !== "" && value !== null && value !== undefined) search.set(key, value);
    const text = search.toString();
    return text ? "?" + text : "";
  }

  function viewerUrl(studyUid) {
    return ROOT + "/lesion-ai/viewer/viewer?StudyInstanceUIDs=" + encodeURIComponent(studyUid);
  }

  function explorerUrl(studyId) {
    return ROOT + "/app/explorer.html#study?uuid=" + encodeURIComponent(studyId);
  }

  // The page's other scripts (models.js) use these helpers and add their views: {name: {show, tick}}.
  const moreViews = {};
  window.LesionAI = Object.freeze({ $, el, api, query, fmtTime, fmtDate, plain, views: moreViews });

  // -- tabs --------------------------------------------------------------------------------------------
  const VIEWS = ["health", "jobs", "rules"];
  let currentView = "health";

  function route() {
    const hash = location.hash.replace(/^#/, "");
    const [view, arg] = hash.split("/");
    const views = VIEWS.concat(Object.keys(moreViews));
    currentView = views.includes(view) ? view : "health";
    for (const name of views) {
      $("view-" + name).classList.toggle("hidden", name !== currentView);
      $("tab-" + name).classList.toggle("active", name === currentView);
    }
    if (currentView === "jobs") {
      if (arg && /^[0-9]+$/.test(arg)) selectJob(Number(arg));
      refreshJobs();
    } else if (currentView === "rules" && !rulesLoaded) {
      loadRules();
    } else if (moreViews[currentView]) {
      moreViews[currentView].show(arg);
    }
  }

  // -- health ------------------------------------------------------------------------------------------
  async function refreshHealth() {
    let health;
    try {
      health = await api("GET", "health");
    } catch (error) {
      const pill = $("status-pill");
      pill.className = "pill unknown";
      pill.textContent = "unreachable";
      if (error.status !== 401) showBanner("Health cannot be read: " + error.message);
      return;
    }
    hideBanner();
    renderHealth(health);
    try {
      const recent = await api("GET", "jobs" + query({ limit: 8 }));
      renderRecent(recent.jobs);
    } catch (error) {
      renderRecent([]);
    }
    $("health-refreshed").textContent = "last at " + new Date().toLocaleTimeString();
  }

  function renderHealth(h) {
    const pill = $("status-pill");
    pill.className = "pill " + (h.status === "ok" ? "ok" : "degraded");
    pill.textContent = h.status;
    const counts = (h.queue && h.queue.counts) || {};
    $("summary-text").textContent =
      "v" + h.version + " · " + STATES.map((s) => (counts[s] ?? "?") + " " + s).join(" · ");

    const status = $("health-status");
    status.className = "big " + (h.status === "ok" ? "ok" : "degraded");
    status.textContent = h.status === "ok" ? "OK" : "Degraded";
    const problems = $("health-problems");
    problems.replaceChildren(...(h.problems || []).map((p) => el("li", { text: p })));
    facts($("health-node"), [
      ["version", h.version],
      ["uptime", fmtDuration(h.uptime_s)],
      ["rules", h.rules.count + " (" + (h.rules.names.join(", ") || "none") + ")"],
      ["rules file", el("code", { text: h.rules.source })],
    ]);

    const names = $("rule-names");
    if (names.childElementCount !== h.rules.names.length) {
      names.replaceChildren(...h.rules.names.map((n) => el("option", { value: n })));
    }

    const card = h.model_card;
    facts($("health-model"), [
      ["name", card ? card.name : null],
      ["version", card ? card.version : null],
      ["created", card && card.created ? fmtDate(card.created) : null],
      ["identity", el("code", { text: h.model })],
      ["intended use", card ? card.intended_use : null],
      ["card", card ? el("a", { href: ROOT + card.url, target: "_blank", rel: "noopener noreferrer", text: "model card (JSON)" }) : "not readable"],
    ]);

    $("health-queue").replaceChildren(
      ...STATES.map((s) => el("div", { class: "count " + s }, el("b", { text: counts[s] ?? "?" }), el("span", { text: s }))),
    );
    $("health-queue-backend").textContent = "backend: " + (h.queue.backend || "?");

    const workers = h.workers.processes || [];
    $("health-workers").tBodies[0].replaceChildren(
      ...(workers.length
        ? workers.map((w) =>
            el("tr", {},
              el("td", { text: w.index }),
              el("td", { text: w.pid ?? "—" }),
              el("td", {}, el("span", { class: w.alive ? "yes" : "no", text: w.alive ? "yes" : "no" })),
              el("td", { text: w.restarts ?? 0 }),
            ))
        : [el("tr", {}, el("td", { colspan: 4, class: "empty", text: "no worker process on this node" }))]),
    );
    $("health-workers-note").textContent = "configured: " + h.workers.configured + (h.workers.configured ? "" : " (workers run elsewhere)");

    const evaluation = h.last_evaluation;
    facts($("health-changes"), [
      ["last change handled", h.changes.last_sequence],
      ["studies arriving", h.changes.pending_studies],
      ["last study evaluated", evaluation ? el("span", {}, el("code", { text: evaluation.study }), " at " + fmtTime(evaluation.time)) : null],
      ["its jobs", evaluation ? (evaluation.jobs.length ? evaluation.jobs.map((j) => (j.id !== null ? "#" + j.id + " " : "") + j.rule + (j.created ? " (queued)" : j.id === null ? " (processed before)" : " (already queued)")).join(", ") : "no rule applied") : undefined],
    ]);
  }

  function renderRecent(jobs) {
    $("health-recent").tBodies[0].replaceChildren(
      ...(jobs.length
        ? jobs.map((job) =>
            el("tr", {},
              el("td", {}, el("a", { href: "#jobs/" + job.id, text: "#" + job.id })),
              el("td", {}, stateBadge(job.state)),
              el("td", { text: job.rule }),
              el("td", { class: "uid", text: job.study_uid || job.study, title: job.study_uid || job.study }),
              el("td", { class: "time", text: fmtTime(job.updated_at) }),
            ))
        : [el("tr", {}, el("td", { colspan: 5, class: "empty", text: "no job yet" }))]),
    );
  }

  // -- jobs --------------------------------------------------------------------------------------------
  const jobsQuery = { state: "", study: "", rule: "", limit: 50, offset: 0 };
  let selectedJob = null;
  let shownJob = null;

  async function refreshJobs() {
    let page;
    try {
      page = await api("GET", "jobs" + query(jobsQuery));
    } catch (error) {
      $("jobs-table").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty", text: "Jobs cannot be read: " + error.message })));
      return;
    }
    const rows = page.jobs.map((job) => {
      const row = el(
        "tr",
        { "data-job": job.id, class: job.id === selectedJob ? "selected" : null, on: { click: () => { location.hash = "#jobs/" + job.id; } } },
        el("td", { text: "#" + job.id }),
        el("td", {}, stateBadge(job.state)),
        el("td", { class: "rule", text: job.rule }),
        el("td", { class: "uid", text: job.study_uid || job.study, title: "Orthanc ID " + job.study }),
        el("td", { text: job.attempts + " / " + job.max_attempts }),
        el("td", { class: "time", text: fmtShort(job.created_at), title: fmtTime(job.created_at) }),
        el("td", { class: "time", text: fmtShort(job.finished_at), title: fmtTime(job.finished_at) }),
        el("td", { class: "error", text: job.error || "", title: job.error || null }),
      );
      return row;
    });
    $("jobs-table").tBodies[0].replaceChildren(
      ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "empty", text: "no job matches these filters" }))]),
    );
    const first = page.jobs.length ? page.offset + 1 : 0;
    $("page-info").textContent = page.jobs.length ? "jobs " + first + "–" + (page.offset + page.jobs.length) : "no jobs";
    $("page-prev").disabled = page.offset === 0;
    $("page-next").disabled = !page.has_more;
    if (selectedJob !== null) refreshDetail(false);
    refreshIgnored();
  }

  /** The studies no rule matched (GET ignored), each rule's outcome on its own line. */
  async function refreshIgnored() {
    const body = $("ignored-table").tBodies[0];
    let page;
    try {
      page = await api("GET", "ignored?limit=20");
    } catch (error) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 3, class: "empty", text: "Ignored studies cannot be read: " + error.message })));
      return;
    }
    $("ignored-note").textContent =
      page.total + " stud" + (page.total === 1 ? "y" : "ies") + " that no rule matched (no job) in the last " +
      page.kept_days + " day" + (page.kept_days === 1 ? "" : "s") + (page.total > page.ignored.length ? ", the newest " + page.ignored.length + " shown" : "") +
      ", with each rule's outcome.";
    const rows = page.ignored.map((entry) =>
      el(
        "tr",
        { "data-study": entry.study },
        el("td", { class: "time", text: fmtShort(entry.time), title: fmtTime(entry.time) }),
        el("td", { class: "uid" },
          el("a", { href: explorerUrl(entry.study), target: "_blank", rel: "noopener noreferrer", text: entry.study_instance_uid || entry.study, title: "Orthanc ID " + entry.study }),
        ),
        el("td", { class: "evaluation" },
          ...(entry.evaluation || []).map((e) => el("div", {}, el("strong", { text: e.rule + ": " }), e.outcome))),
      ),
    );
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 3, class: "empty", text: "no study was ignored" }))]));
  }

  function selectJob(id) {
    if (selectedJob === id) return;
    selectedJob = id;
    shownJob = null;
    for (const row of $("jobs-table").tBodies[0].rows) row.classList.toggle("selected", Number(row.dataset.job) === id);
    refreshDetail(true);
  }

  async function refreshDetail(force) {
    const id = selectedJob;
    let job;
    try {
      job = await api("GET", "jobs/" + id);
    } catch (error) {
      $("job-detail").replaceChildren(el("p", { class: "message error", text: "Job " + id + ": " + error.message }));
      return;
    }
    if (id !== selectedJob) return;
    if (!force && shownJob && shownJob.updated_at === job.updated_at && shownJob.state === job.state) return;
    shownJob = job;
    renderDetail(job);
  }

  /** What the last action on a job answered: shown with its details until another job is chosen, or
   *  for NOTICE_MS (the details are refreshed meanwhile). */
  const NOTICE_MS = 30000;
  let notice = null;

  function notify(job, kind, text) {
    notice = { id: job.id, kind, text, until: Date.now() + NOTICE_MS };
    renderDetail(shownJob && shownJob.id === job.id ? shownJob : job);
  }

  function renderDetail(job) {
    const payload = job.payload || {};
    const progress = job.progress || {};
    const detail = $("job-detail");
    const parts = [];
    parts.push(el("h3", {}, "Job #" + job.id + " ", stateBadge(job.state)));
    if (notice && notice.id === job.id && notice.until > Date.now()) {
      parts.push(el("div", { class: "message " + notice.kind, text: notice.text }));
    }

    const links = el("div", { class: "links" });
    if (job.study_uid) links.append(el("a", { href: viewerUrl(job.study_uid), target: "_blank", rel: "noopener noreferrer", text: "Open in the viewer" }));
    links.append(el("a", { href: explorerUrl(job.study), target: "_blank", rel: "noopener noreferrer", text: "Open in Orthanc Explorer" }));
    parts.push(links);

    const actions = el("div", { class: "actions" });
    // Superseded and withdrawn jobs are replaced by the node itself: they are not retried by hand.
    const superseded = ["superseded by job", "withdrawn:"].some((start) => (job.error || "").startsWith(start));
    if (job.state === "failed" && !superseded) {
      actions.append(
        el("button", {
          type: "button",
          class: "primary",
          id: "job-retry",
          text: "Retry this job",
          title: "Queue this job again with its attempts reset. What it did stays done: results already stored are kept and only the destinations not served yet are sent. Re-process the study to start afresh.",
          on: { click: () => retryJob(job) },
        }),
      );
    }
    actions.append(
      el("button", {
        type: "button",
        id: "job-reprocess",
        text: "Re-process the study",
        title: "Apply the rules in force to the study and queue its jobs again now, even if it was processed before.",
        on: { click: () => reprocessStudy(job) },
      }),
    );
    parts.push(actions);

    const dl = el("dl", { class: "facts" });
    const started = job.created_at;
    const ended = job.finished_at;
    facts(dl, [
      ["rule", job.rule],
      ["state", job.state + (job.worker ? " (worker " + job.worker + ")" : "")],
      ["attempts", job.attempts + " of " + job.max_attempts],
      ["priority", job.priority],
      ["model", el("code", { text: job.model })],
      ["created", fmtTime(started)],
      ["updated", fmtTime(job.updated_at)],
      ["finished", fmtTime(ended)],
      ["finished after", ended ? fmtDuration(ended - started) : null],
      ["next try", job.state === "queued" && job.not_before > Date.now() / 1000 && job.not_before < 1e14 ? fmtTime(job.not_before) : undefined],
      ["error", job.error ? el("span", { class: "no", text: job.error }) : null],
    ]);
    parts.push(dl);

    parts.push(el("h3", { text: "Study" }));
    const study = el("dl", { class: "facts" });
    facts(study, [
      ["Orthanc ID", el("code", { text: job.study })],
      ["StudyInstanceUID", job.study_uid ? el("code", { text: job.study_uid }) : null],
      ["description", job.study_exists === false ? "(the study is no longer in Orthanc)" : job.study_description],
    ]);
    parts.push(study);

    if (job.document_error) parts.push(el("div", { class: "message error", text: job.document_error }));

    const series = payload.series || [];
    const uids = payload.series_uids || [];
    parts.push(el("h3", { text: "Input series (" + series.length + ")" }));
    parts.push(
      el("table", { class: "table compact ids" },
        el("thead", {}, el("tr", {}, el("th", { text: "SeriesInstanceUID" }), el("th", { text: "Orthanc ID" }))),
        el("tbody", {}, series.map((s, i) => el("tr", {}, el("td", { text: uids[i] || "—" }), el("td", { text: s })))),
      ),
    );

    parts.push(el("h3", { text: "Outputs and destinations" }));
    const destinations = payload.destinations || {};
    const named = Object.entries(destinations).flatMap(([kind, names]) => (names || []).map((n) => kind + ":" + n));
    const where = el("dl", { class: "facts" });
    facts(where, [
      ["outputs", (payload.outputs || []).join(", ")],
      ["destinations", named.join(", ") || "none (results stay in this node)"],
    ]);
    parts.push(where);

    parts.push(el("h3", { text: "Progress" }));
    const forwarded = Object.entries(progress.forwarded || {});
    const prog = el("dl", { class: "facts" });
    facts(prog, [
      ["analysis", progress.status || "not yet"],
      ["reason", progress.reason || undefined],
      ["results stored", progress.stored ? progress.stored.length + " object(s)" : "none yet"],
      ["result series", (progress.result_series || []).length ? el("span", { class: "mono", text: progress.result_series.join(", ") }) : undefined],
      ["model used", progress.model && progress.model.name ? progress.model.name + " " + (progress.model.version || "") : undefined],
      ["forwarded", forwarded.length ? el("span", {}, forwarded.map(([dest, state], i) => [i ? ", " : "", dest + " ", el("span", { class: state === "done" ? "yes" : "no", text: state })])) : "nothing yet"],
    ]);
    parts.push(prog);

    const details = progress.details || {};
    const keys = Object.keys(details);
    if (keys.length) {
      parts.push(el("h3", { text: "Analysis details" }));
      const dd = el("dl", { class: "facts" });
      facts(dd, keys.map((k) => [k, el("span", { class: "mono", text: plain(details[k]) })]));
      parts.push(dd);
    }
    detail.replaceChildren(...parts);
  }

  async function retryJob(job) {
    try {
      const answer = await api("POST", "jobs/" + job.id + "/retry");
      notify(job, "ok", "Job #" + job.id + ": " + answer.message + ".");
      await refreshDetail(true);
    } catch (error) {
      notify(job, "error", "Retry refused: " + error.message);
    }
    refreshJobs();
  }

  async function reprocessStudy(job) {
    if (!window.confirm("Process study " + (job.study_uid || job.study) + " again now, even if it was processed before?")) return;
    try {
      const answer = await api("POST", "studies/" + encodeURIComponent(job.study) + "/process", { json: {} });
      const ids = answer.jobs.map((j) => "#" + (j.id ?? "—")).join(", ");
      notify(job, "ok", "Study: " + answer.message + (ids ? " (jobs " + ids + ")" : "") + ".");
    } catch (error) {
      notify(job, "error", "Re-processing refused: " + error.message);
    }
    refreshJobs();
  }

  // -- rules -------------------------------------------------------------------------------------------
  let rulesLoaded = false;
  let savedText = "";
  let errorLine = null;

  function setMessage(kind, text, where) {
    const box = $("rules-message");
    box.className = "message " + kind;
    box.replaceChildren();
    if (where) box.append(el("span", { class: "where", text: where }), " ");
    box.append(text);
  }

  function renderGutter() {
    const text = $("rules-text").value;
    const count = text.split("\n").length;
    const lines = [];
    for (let n = 1; n <= count; n++) {
      lines.push(n === errorLine ? el("span", { class: "bad", text: String(n) }) : String(n), "\n");
    }
    $("rules-gutter").replaceChildren(...lines);
    $("rules-gutter").scrollTop = $("rules-text").scrollTop;
  }

  function markDirty() {
    const dirty = $("rules-text").value !== savedText;
    $("rules-save").textContent = dirty ? "Save •" : "Save";
  }

  async function loadRules() {
    try {
      const rules = await api("GET", "rules");
      rulesLoaded = true;
      savedText = rules.text;
      $("rules-text").value = rules.text;
      $("rules-source").textContent =
        rules.source + (rules.saved_by ? " · saved by " + rules.saved_by + " on " + fmtTime(rules.saved_at) : "");
      $("rule-names").replaceChildren(...rules.rules.map((r) => el("option", { value: r.name })));
      errorLine = null;
      renderGutter();
      markDirty();
    } catch (error) {
      setMessage("error", "The rules cannot be read: " + error.message);
    }
    loadHistory();
    loadStudies();
  }

  function showRulesError(error, what) {
    const data = error.data || {};
    errorLine = typeof data.line === "number" ? data.line : null;
    renderGutter();
    const where = [errorLine !== null ? "line " + errorLine : null, data.field ? "field " + data.field : null].filter(Boolean).join(", ");
    setMessage("error", what + ": " + error.message, where ? "[" + where + "]" : null);
    if (errorLine !== null) selectLine(errorLine);
  }

  function selectLine(line) {
    const area = $("rules-text");
    const lines = area.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    const end = start + (lines[line - 1] || "").length;
    area.focus();
    area.setSelectionRange(start, end);
    const lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 18;
    area.scrollTop = Math.max(0, (line - 4) * lineHeight);
    renderGutter();
  }

  async function validateRules() {
    try {
      const answer = await api("POST", "rules/validate", { text: $("rules-text").value });
      errorLine = null;
      renderGutter();
      setMessage("ok", "Valid: " + answer.rules.length + " rule(s): " + answer.rules.map((r) => r.name).join(", ") + ". Not applied yet: Save applies them.");
    } catch (error) {
      showRulesError(error, "Not valid");
    }
  }

  async function saveRules() {
    const text = $("rules-text").value;
    if (text === savedText && !window.confirm("The rules did not change. Save them anyway?")) return;
    try {
      const answer = await api("PUT", "rules", { text });
      savedText = text;
      errorLine = null;
      setMessage("ok", "Saved and applied: " + answer.rules.length + " rule(s): " + answer.rules.map((r) => r.name).join(", ") + ". The previous version is kept in the history.");
      await loadRules();
    } catch (error) {
      showRulesError(error, "Not saved, the rules in force did not change");
    }
  }

  async function loadHistory() {
    let history;
    try {
      history = await api("GET", "rules/history");
    } catch (error) {
      $("history-note").textContent = "The history cannot be read: " + error.message;
      return;
    }
    const current = history.current || {};
    $("history-note").textContent =
      "The last " + history.keep + " versions replaced through this page or the API are kept." +
      (current.saved_by ? " The rules in force were saved by " + current.saved_by + " on " + fmtTime(current.saved_at) + "." : "");
    $("history-table").tBodies[0].replaceChildren(
      ...(history.versions.length
        ? history.versions.map((v) =>
            el("tr", {},
              el("td", { text: v.number }),
              el("td", { text: v.saved_by || "unknown" }),
              el("td", { text: fmtTime(v.saved_at) }),
              el("td", { text: v.replaced_by || "unknown" }),
              el("td", { text: fmtTime(v.replaced_at) }),
              el("td", {},
                el("button", { type: "button", text: "Load", title: "show this version in the editor (not applied)", on: { click: () => loadVersion(v) } }), " ",
                el("button", { type: "button", class: "danger", text: "Restore", "data-restore": v.number, on: { click: () => restoreVersion(v) } }),
              ),
            ))
        : [el("tr", {}, el("td", { colspan: 6, class: "empty", text: "no earlier version yet" }))]),
    );
  }

  function loadVersion(version) {
    $("rules-text").value = version.text;
    errorLine = null;
    renderGutter();
    markDirty();
    setMessage("ok", "Version " + version.number + " loaded into the editor: Validate, Test, then Save to apply it (or Restore it directly).");
  }

  async function restoreVersion(version) {
    if (!window.confirm("Put version " + version.number + " of the rules back in force? The rules in force now are kept in the history.")) return;
    try {
      await api("POST", "rules/history/" + version.number + "/restore");
      await loadRules();
      setMessage("ok", "Version " + version.number + " restored and applied.");
    } catch (error) {
      showRulesError(error, "Version " + version.number + " not restored");
    }
  }

  async function loadStudies() {
    try {
      const answer = await api("GET", "studies" + query({ limit: 100 }));
      const select = $("test-study");
      const chosen = select.value;
      select.replaceChildren(
        el("option", { value: "", text: answer.studies.length ? "(choose one of the " + answer.studies.length + " newest studies)" : "(no study in Orthanc)" }),
        ...answer.studies.map((s) =>
          el("option", { value: s.id, text: (s.description || "(no description)") + " · " + s.series + " series · " + s.study_instance_uid }),
        ),
      );
      select.value = chosen;
    } catch (error) {
      setMessage("error", "The studies cannot be listed: " + error.message);
    }
  }

  async function testRules() {
    const study = $("test-study-id").value.trim() || $("test-study").value;
    const out = $("test-result");
    if (!study) {
      out.replaceChildren(el("div", { class: "message error", text: "Choose a study, or give its Orthanc ID." }));
      return;
    }
    out.replaceChildren(el("p", { class: "muted", text: "Testing…" }));
    try {
      const result = await api("POST", "rules/test", { json: { study, rules: $("rules-text").value, roles: true } });
      renderTest(result);
    } catch (error) {
      if (error.data && error.data.line !== undefined) showRulesError(error, "The rules in the editor are not valid");
      out.replaceChildren(el("div", { class: "message error", text: "Test failed: " + error.message }));
    }
  }

  function seriesRow(series, verdicts) {
    const verdict = verdicts.get(series.id);
    let role = "—";
    if (verdict) {
      role = verdict.candidate_for && verdict.candidate_for.length ? "candidate for " + verdict.candidate_for.join(", ") : verdict.ignored ? "ignored: " + verdict.ignored : "—";
      if (verdict.b_values && verdict.b_values.length) role += " (b " + verdict.b_values.join(", ") + ")";
    }
    return el("tr", {},
      el("td", { text: series.series_number ?? "" }),
      el("td", { text: series.description }),
      el("td", { text: series.modality }),
      el("td", { text: series.instances }),
      el("td", {}, role, verdict && verdict.reasons && verdict.reasons.length ? el("div", { class: "reasons", text: verdict.reasons.join("; ") }) : null),
    );
  }

  function renderTest(result) {
    const parts = [el("p", {}, "Study ", el("code", { text: result.study_instance_uid || result.study }), el("span", { class: "muted", text: " (Orthanc ID " + result.study + ")" }))];
    if (!result.matches.length) {
      parts.push(el("div", { class: "message error", text: "No rule matches this study: it would not be processed." }));
      parts.push(el("ul", { class: "evaluation" }, ...(result.evaluation || []).map((e) => el("li", {}, el("strong", { text: e.rule + ": " }), e.outcome))));
    }
    for (const match of result.matches) {
      const box = el("div", { class: "match" });
      const named = Object.entries(match.destinations || {}).flatMap(([kind, names]) => (names || []).map((n) => kind + ":" + n));
      box.append(
        el("div", {}, el("strong", { text: "Rule " + match.rule + " matches" }), el("span", { class: "muted", text: " · priority " + match.priority + " · outputs " + match.outputs.join(", ") + " · destinations " + (named.join(", ") || "none") })),
      );
      if ((result.already_processed || []).includes(match.job_key)) box.append(el("div", { class: "muted small", text: "already processed with these inputs and this model" }));
      const roles = match.roles || {};
      const verdicts = new Map(((roles.series) || []).map((s) => [s.id, s]));
      box.append(
        el("table", { class: "table compact" },
          el("thead", {}, el("tr", {}, ["#", "series description", "modality", "images", "role"].map((h) => el("th", { text: h })))),
          el("tbody", {}, match.input_series.map((s) => seriesRow(s, verdicts))),
        ),
      );
      if (roles.error) box.append(el("div", { class: "message error", text: "Roles cannot be read: " + roles.error }));
      if (roles.roles) {
        const r = roles.roles;
        const describe = (c) => (c ? (c.series_number !== null && c.series_number !== undefined ? "#" + c.series_number + " " : "") + c.description : "none found");
        const dl = el("dl", { class: "facts" });
        facts(dl, [
          ["T2W", describe(r.t2w && r.t2w.preferred)],
          ["ADC", describe(r.adc && r.adc.preferred)],
          ["DWI", r.dwi ? r.dwi.map((d) => describe(d) + " (b " + (d.b_values || []).join(", ") + ")").join("; ") : "none found"],
        ]);
        box.append(el("h3", { text: "Roles (from the headers)" }), dl);
      }
      parts.push(box);
    }
    if ((result.excluded_series || []).length) {
      parts.push(el("h3", { text: "Series left out" }));
      parts.push(el("table", { class: "table compact" },
        el("thead", {}, el("tr", {}, ["#", "series description", "modality", "why"].map((h) => el("th", { text: h })))),
        el("tbody", {}, result.excluded_series.map((s) => el("tr", {}, el("td", { text: s.series_number ?? "" }), el("td", { text: s.description }), el("td", { text: s.modality }), el("td", { text: s.reason })))),
      ));
    }
    $("test-result").replaceChildren(...parts);
  }

  // -- wiring ------------------------------------------------------------------------------------------
  function wire() {
    $("job-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      jobsQuery.state = $("filter-state").value;
      jobsQuery.study = $("filter-study").value.trim();
      jobsQuery.rule = $("filter-rule").value.trim();
      jobsQuery.limit = Number($("filter-limit").value);
      jobsQuery.offset = 0;
      refreshJobs();
    });
    $("filter-clear").addEventListener("click", () => {
      $("job-filters").reset();
      Object.assign(jobsQuery, { state: "", study: "", rule: "", limit: Number($("filter-limit").value), offset: 0 });
      refreshJobs();
    });
    $("page-prev").addEventListener("click", () => {
      jobsQuery.offset = Math.max(0, jobsQuery.offset - jobsQuery.limit);
      refreshJobs();
    });
    $("page-next").addEventListener("click", () => {
      jobsQuery.offset += jobsQuery.limit;
      refreshJobs();
    });
    const area = $("rules-text");
    area.addEventListener("input", () => {
      renderGutter();
      markDirty();
    });
    area.addEventListener("scroll", () => {
      $("rules-gutter").scrollTop = area.scrollTop;
    });
    area.addEventListener("keydown", (event) => {
      if (event.key === "Tab" && !event.shiftKey && !event.ctrlKey && !event.altKey) {
        event.preventDefault();
        area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
        renderGutter();
        markDirty();
      }
    });
    $("rules-reload").addEventListener("click", () => {
      if (area.value !== savedText && !window.confirm("Discard the changes in the editor?")) return;
      setMessage("ok", "Reloaded the rules in force.");
      loadRules();
    });
    $("rules-validate").addEventListener("click", validateRules);
    $("rules-save").addEventListener("click", saveRules);
    $("test-form").addEventListener("submit", (event) => {
      event.preventDefault();
      testRules();
    });
    window.addEventListener("hashchange", route);
    window.addEventListener("beforeunload", (event) => {
      if (rulesLoaded && area.value !== savedText) event.preventDefault();
    });
  }

  function tick() {
    refreshHealth();
    if (currentView === "jobs") refreshJobs();
    else if (moreViews[currentView]) moreViews[currentView].tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    route();
    refreshHealth();
    window.setInterval(tick, REFRESH_MS);
  });
})();
