// discoverd dashboard: renders the views the server sends over one EventSource. Plain JS, no framework.
//
// Every string in a view came from etcd and is untrusted: it only ever becomes a text node
// (el() below, textContent), never markup; links are built from encodeURIComponent'd names.
"use strict";

(() => {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const csrf = meta("discoverd-csrf");
  const readOnly = meta("discoverd-read-only") === "1";
  const $ = (id) => document.getElementById(id);

  // el("td", {class: "x", data: {server: id}}, "text", node, null) -> <td class="x" data-server="...">
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const seg = (name) => encodeURIComponent(name);
  const serviceUrl = (s) => `/services/${seg(s)}`;
  const rolloutUrl = (s) => `/services/${seg(s)}/rollout`;
  const instanceUrl = (s, i) => `/instances/${seg(s)}/${seg(i)}`;
  const token = (word) => (/^[A-Za-z]+$/.test(word || "") ? word : "unknown");
  const chip = (kind, word, text) => el("span", { class: `chip ${kind}-${token(word)}` }, text === undefined ? word : text);
  const badge = (cls, text) => el("span", { class: `chip ${cls}` }, text);
  const time = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$/, " UTC") : "");
  const table = (heads, rows) => el("table", {}, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
  const card = (title, ...body) => el("section", { class: "card" }, title ? el("h2", {}, title) : null, ...body);
  const title = (text) => { $("title").textContent = text; document.title = `${text} - discoverd`; return null; };
  const none = (text) => el("p", { class: "muted" }, text);

  function route() {
    let parts;
    try {
      parts = location.pathname.split("/").slice(1).map(decodeURIComponent);
    } catch (_) {
      return null;
    }
    if (parts.length === 1 && parts[0] === "") return { view: "fleet" };
    if (parts[0] === "services" && parts.length === 2) return { view: "service", service: parts[1] };
    if (parts[0] === "services" && parts.length === 3 && parts[2] === "rollout") return { view: "rollout", service: parts[1] };
    if (parts[0] === "instances" && parts.length === 3) return { view: "instance", service: parts[1], instance: parts[2] };
    return null;
  }

  function crumbs(r) {
    const items = [];
    if (r.service) items.push(" / ", el("a", { href: serviceUrl(r.service) }, r.service));
    if (r.view === "rollout") items.push(" / ", el("a", { href: rolloutUrl(r.service) }, "rollout"));
    if (r.instance) items.push(" / ", el("a", { href: instanceUrl(r.service, r.instance) }, r.instance));
    $("crumbs").replaceChildren(...items);
  }

  function progress(summary) {
    const total = Math.max(summary.total || 0, 1);
    const pct = (n) => `${Math.min(100, (100 * n) / total).toFixed(1)}%`;
    const bar = el("div", { class: "bar", id: "progress", data: { healthy: summary.healthy, updated: summary.updated, total: summary.total || 0 } },
      el("div", { class: "updated" }), el("div", { class: "healthy" }));
    // Widths through the CSSOM: the page's Content-Security-Policy forbids inline style attributes.
    bar.children[0].style.width = pct(summary.updated);
    bar.children[1].style.width = pct(summary.healthy);
    return bar;
  }

  function rolloutSummary(service, r) {
    if (!r) return el("span", { class: "muted" }, "none");
    const what = r.restart ? "restart" : `to ${r.to_version}`;
    return el("a", { href: rolloutUrl(service) }, chip("phase", r.phase), ` ${what}, healthy ${r.healthy}/${r.total ?? "?"}`);
  }

  // fleet: servers and services

  function fleet(v) {
    const servers = v.servers.map((s) =>
      el("tr", { data: { server: s.id } },
        el("td", {}, s.id),
        el("td", { class: "state" }, s.online ? badge("online", "online") : badge("offline", "offline"),
          s.drain ? badge("drained", s.drain) : s.drained ? badge("drained", "drain asked") : null),
        el("td", {}, s.hostname || ""), el("td", {}, s.agent_version || ""),
        el("td", {}, String(s.instances)), el("td", {}, time(s.heartbeat)),
        el("td", { class: "error" }, s.error)));
    const services = v.services.map((s) =>
      el("tr", { data: { service: s.name } },
        el("td", {}, el("a", { href: serviceUrl(s.name) }, s.name)),
        el("td", {}, s.versions.join(", ")),
        el("td", {}, String(s.instances)),
        el("td", { class: "phases" }, s.by_version.map((b) =>
          el("div", { data: { version: b.version } }, el("span", { class: "muted" }, `${b.version}: `),
            Object.entries(b.phases).map(([phase, n]) => chip("phase", phase, `${phase} ${n}`))))),
        el("td", {}, rolloutSummary(s.name, s.rollout))));
    const problems = v.problems.map((p) => el("li", { class: "error" }, p.error));
    return [
      title("Fleet"),
      card(`Servers (${v.servers.filter((s) => s.online).length} online of ${v.servers.length})`,
        servers.length ? table(["server", "state", "host", "agent", "instances", "heartbeat", ""], servers) : none("No servers yet.")),
      card("Services",
        services.length ? table(["service", "versions", "instances", "instances by version and phase", "rollout"], services) : none("No services yet.")),
      problems.length ? card("Invalid documents", el("ul", {}, problems)) : null,
    ];
  }

  // one service

  function service(v) {
    const versions = v.versions.map((x) =>
      el("tr", { data: { version: x.version } }, el("td", {}, x.version), el("td", {}, String(x.instances)), el("td", { class: "error" }, x.error)));
    const rows = [];
    for (const i of v.instances) {
      i.servers.forEach((p, n) => rows.push(el("tr", { data: { instance: i.id, server: p.server } },
        el("td", {}, n === 0 ? el("a", { href: instanceUrl(v.name, i.id) }, i.id) : ""),
        el("td", {}, n === 0 ? i.desired_version || "" : ""),
        el("td", {}, p.server || "-"),
        el("td", { class: "phase" }, chip("phase", p.phase)),
        el("td", {}, p.version || ""), el("td", {}, p.previous_version || ""),
        el("td", {}, p.restarts === null ? "" : String(p.restarts)), el("td", {}, time(p.since)),
        el("td", { class: "error" }, [i.error, p.message].filter(Boolean).join("; ")))));
    }
    return [
      title(`Service ${v.name}`),
      v.exists ? null : el("p", { class: "error" }, "No such service (yet): this page fills in when it appears."),
      card("Rollout", el("p", {}, rolloutSummary(v.name, v.rollout), " ", el("a", { href: rolloutUrl(v.name) }, "open the rollout page")),
        v.rollout ? progress(v.rollout) : null),
      card("Versions", versions.length ? table(["version", "instances on it", ""], versions) : none("No versions.")),
      card("Instances", rows.length ? table(["instance", "wants", "server", "phase", "runs", "previous", "restarts", "since", "message"], rows) : none("No instances.")),
    ];
  }

  // one rollout

  function rollout(v) {
    const s = v.status;
    const parts = [title(v.restart ? `Restart of ${v.service}` : `Rollout of ${v.service}`)];
    if (v.config_error) parts.push(el("p", { class: "error" }, v.config_error));
    if (v.status_error) parts.push(el("p", { class: "error" }, v.status_error));
    if (!v.config && !s) {
      parts.push(card("", none("No rollout yet: start one below.")));
      return parts;
    }
    if (s) {
      parts.push(card("Progress",
        el("p", {}, el("span", { id: "rollout-phase" }, chip("phase", s.phase)),
          v.restart ? " restart, each instance keeps its version: " : ` to version ${s.to_version}: `,
          el("span", { id: "rollout-counts" }, `healthy ${s.healthy}/${s.total}, updated ${s.updated}/${s.total}`)),
        progress(s),
        s.message ? el("p", { class: "muted", id: "rollout-message" }, s.message) : null,
        el("dl", {},
          el("dt", {}, "started"), el("dd", {}, time(s.started_at)),
          el("dt", {}, "last step"), el("dd", {}, time(s.updated_at)),
          el("dt", {}, "canary"), el("dd", { id: "canary" }, s.canary.length ? s.canary.join(", ") : "none"),
          el("dt", {}, "skipped"), el("dd", {}, s.skipped.join(", ") || "none"),
          el("dt", {}, "reverted"), el("dd", {}, s.reverted.join(", ") || "none")),
        el("h2", {}, "Batches"),
        s.batches.length ? el("ol", { id: "batches" }, s.batches.map((b) => el("li", {}, `${b.instances.join(", ")} `, el("span", { class: "muted" }, time(b.at)))))
          : none("No instance updated yet.")));
    } else {
      parts.push(card("Progress", el("p", { id: "rollout-phase" }, chip("phase", "Requested"), " waiting for the controller")));
    }
    if (v.config) {
      const c = v.config;
      const items = ["to_version", "restart_token", "canary", "pause_after_canary", "max_unavailable", "min_healthy_seconds",
        "progress_deadline_seconds", "max_restarts", "auto_revert", "paused", "undo"]
        .filter((k) => k in c).flatMap((k) => [el("dt", {}, k), el("dd", { data: { field: k } }, String(c[k]))]);
      parts.push(card("Asked for (rollout config)", el("dl", { id: "config" }, items)));
    }
    const rows = v.instances.map((i) => el("tr", { data: { instance: i.id } },
      el("td", {}, el("a", { href: instanceUrl(v.service, i.id) }, i.id)),
      el("td", {}, i.from || ""), el("td", {}, i.desired_version || ""),
      el("td", {}, chip("state", i.state), i.canary ? badge("canary", "canary") : null),
      el("td", {}, i.reports.map((p) => chip("phase", p.phase, `${p.server || "unassigned"}: ${p.phase} ${p.version || ""}`)))));
    if (rows.length) parts.push(card("Instances", table(["instance", "from", "wants", "rollout", "on servers"], rows)));
    return parts;
  }

  // the buttons and the start form: built once, so typing is not lost when a view arrives

  let actions = null;

  function post(path, body) {
    const result = $("action-result");
    result.className = "muted";
    result.textContent = "Sending...";
    fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Discoverd-CSRF": csrf },
      body: JSON.stringify(body),
    }).then(async (answer) => {
      let data = {};
      try { data = await answer.json(); } catch (_) { data = { error: `HTTP ${answer.status}` }; }
      result.className = answer.ok ? "" : "error";
      result.textContent = answer.ok ? data.message : data.error || `HTTP ${answer.status}`;
    }, (error) => {
      result.className = "error";
      result.textContent = `The dashboard did not answer: ${error}`;
    });
  }

  function buildActions(service) {
    const base = `/api/rollouts/${seg(service)}`;
    const button = (id, text, action) => {
      const b = el("button", { id, type: "button", disabled: true }, text);
      b.addEventListener("click", () => post(`${base}/${action}`, {}));
      return b;
    };
    const version = el("select", { id: "start-version" });
    const canary = el("input", { id: "start-canary", type: "number", min: "0", value: "0" });
    const pauseAfter = el("input", { id: "start-pause-after-canary", type: "checkbox" });
    const maxUnavailable = el("input", { id: "start-max-unavailable", value: "1", title: "a count, or a percentage such as 25%" });
    const minHealthy = el("input", { id: "start-min-healthy-seconds", type: "number", min: "0", step: "any", placeholder: "10" });
    const start = el("button", { id: "btn-start", type: "submit", class: "primary", disabled: true }, "Start rollout");
    const form = el("form", { class: "start" },
      el("label", {}, "to version", version), el("label", {}, "canary", canary),
      el("label", { class: "check" }, pauseAfter, "pause after canary"),
      el("label", {}, "max unavailable", maxUnavailable), el("label", {}, "min healthy seconds", minHealthy), start);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      post(base, {
        to_version: version.value, canary: Number(canary.value || 0), pause_after_canary: pauseAfter.checked,
        max_unavailable: maxUnavailable.value.trim(), min_healthy_seconds: minHealthy.value === "" ? null : Number(minHealthy.value),
      });
    });
    const section = $("actions");
    section.replaceChildren(...[
      el("h2", {}, "Actions"),
      readOnly ? el("p", { class: "muted", id: "read-only-note" }, "Read-only dashboard: nothing can be changed from here.") : null,
      el("div", { class: "buttons" }, button("btn-pause", "Pause", "pause"), button("btn-resume", "Resume", "resume"), button("btn-undo", "Undo", "undo")),
      form, el("div", { id: "action-result" })].filter(Boolean));
    section.hidden = false;
    return { version, start };
  }

  function updateActions(v) {
    if (!actions) actions = buildActions(v.service);
    for (const name of ["pause", "resume", "undo", "start"]) $(`btn-${name}`).disabled = readOnly || !v.can[name];
    const current = [...actions.version.options].map((o) => o.value);
    if (current.join("\n") !== v.versions.join("\n")) {
      const chosen = actions.version.value;
      actions.version.replaceChildren(...v.versions.map((x) => el("option", { value: x }, x)));
      if (v.versions.includes(chosen)) actions.version.value = chosen;
      else if (v.versions.length) actions.version.value = v.versions[v.versions.length - 1];
    }
  }

  // one instance

  function instance(v) {
    const parts = [title(`Instance ${v.service}/${v.id}`)];
    if (!v.exists) parts.push(el("p", { class: "error" }, "No such instance (yet): this page fills in when it appears."));
    if (v.error) parts.push(el("p", { class: "error" }, v.error));
    if (v.config) {
      const run = v.config.run_script || {};
      parts.push(card("Asked for", el("dl", {},
        el("dt", {}, "version"), el("dd", { id: "desired-version" }, v.config.service_version),
        run.command || (run.argv || []).length ? [el("dt", {}, "run script"), el("dd", {}, [run.command || "(the version's)", ...(run.argv || [])].join(" "))] : null)));
    }
    if (!v.servers.length) parts.push(card("", none("No server lists this instance.")));
    for (const s of v.servers) {
      const st = s.status;
      const head = el("h2", {}, `On server ${s.server} `, s.online ? badge("online", "online") : badge("offline", "offline"));
      if (!st) {
        parts.push(el("section", { class: "card", data: { server: s.server } }, head,
          s.error ? el("p", { class: "error" }, s.error) : none(s.online ? "No status reported yet." : "The agent is offline.")));
        continue;
      }
      const field = (name, value) => [el("dt", {}, name), el("dd", { data: { field: name } }, value === null || value === undefined ? "" : String(value))];
      const history = st.history.map((h) => el("tr", {}, el("td", {}, chip("phase", h.phase)), el("td", {}, time(h.at)), el("td", {}, h.version || "")));
      parts.push(el("section", { class: "card", data: { server: s.server } }, head,
        el("dl", { class: "status" },
          el("dt", {}, "phase"), el("dd", { data: { field: "phase" } }, chip("phase", st.phase)),
          field("version", st.version), field("previous version", st.previous_version), field("pid", st.pid),
          field("restarts", st.restarts), field("last exit code", st.last_exit_code),
          field("since", time(st.since)), field("updated", time(st.updated_at)), field("message", st.message)),
        el("h2", {}, "Last phase changes"),
        history.length ? table(["phase", "at", "version"], history) : none("None recorded.")));
    }
    return parts;
  }

  // the instance page's log tails: one EventSource per server, built once, outside the redrawn part

  const logTails = new Map();
  const KEEP_LINES = 1000;

  function logTail(service, instance, server) {
    const state = el("p", { class: "muted log-state" }, "connecting...");
    const pre = el("pre", { class: "log", data: { server } });
    const section = el("section", { class: "card", data: { server } }, el("h2", {}, `Run log on ${server}`), state, pre);
    const query = new URLSearchParams({ service, instance, server });
    const source = new EventSource(`/api/logs?${query}`);
    const say = (text, error) => { state.textContent = text; state.className = `log-state ${error ? "error" : "muted"}`; };
    source.onopen = () => { pre.replaceChildren(); say("live: the last lines, then new ones as they come"); };
    source.onerror = () => say("reconnecting...", true);
    source.addEventListener("lines", (event) => {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      for (const line of JSON.parse(event.data).lines) pre.append(el("span", {}, line.text, "\n"));
      while (pre.childNodes.length > KEEP_LINES) pre.firstChild.remove();
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("notice", (event) => say(JSON.parse(event.data).message, true));
    for (const kind of ["end", "failed"]) {
      source.addEventListener(kind, (event) => { say(JSON.parse(event.data).message, kind === "failed"); source.close(); });
    }
    return { section, source };
  }

  function updateLogs(v) {
    const servers = v.servers.map((s) => s.server);
    for (const [server, tail] of logTails) {
      if (!servers.includes(server)) { tail.source.close(); tail.section.remove(); logTails.delete(server); }
    }
    for (const server of servers) {
      if (!logTails.has(server)) logTails.set(server, logTail(v.service, v.id, server));
    }
    const section = $("logs");
    const shown = [...section.children];
    const wanted = servers.map((server) => logTails.get(server).section);
    // Moved only when the list changes: a moved log loses its scroll position.
    if (shown.length !== wanted.length || shown.some((node, i) => node !== wanted[i])) section.replaceChildren(...wanted);
    section.hidden = servers.length === 0;
  }

  // the stream

  const renderers = { fleet, service, rollout, instance };

  function show(v) {
    const began = performance.now();
    const banner = $("banner");
    banner.hidden = !v.etcd_error;
    banner.textContent = v.etcd_error ? `etcd: ${v.etcd_error} (showing the last state seen)` : "";
    $("revision").textContent = `etcd revision ${v.revision}`;
    $("main").replaceChildren(...renderers[v.view](v).filter(Boolean));
    if (v.view === "rollout") updateActions(v);
    if (v.view === "instance") updateLogs(v);
    document.body.dataset.revision = String(v.revision);
    document.body.dataset.renderMs = (performance.now() - began).toFixed(1);  // bench/dashboard.py reads it
  }

  function start() {
    const r = route();
    $("mode").textContent = readOnly ? "read-only" : "";
    if (!r) {
      $("main").replaceChildren(el("p", { class: "error" }, "No such page."));
      return;
    }
    crumbs(r);
    const query = new URLSearchParams(Object.entries(r));
    const source = new EventSource(`/api/events?${query}`);
    const live = $("live");
    source.onopen = () => { live.className = "live"; live.textContent = "live"; };
    source.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
    // Views that arrive while the page is still drawing collapse into the newest one.
    let latest = null;
    source.onmessage = (event) => {
      if (latest === null) setTimeout(() => { const data = latest; latest = null; show(JSON.parse(data)); }, 0);
      latest = event.data;
    };
  }

  start();
})();
