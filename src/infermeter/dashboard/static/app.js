/* infermeter dashboard: sign in with an API key, then draw the tenant or operator view from
 * the JSON API. The key lives in sessionStorage and travels only as a Bearer header.
 * Numbers on screen are for reading; the exact amounts are the API's decimal strings. */
"use strict";

(() => {
  const KEY = "infermeter.apiKey";
  const $ = (sel) => document.querySelector(sel);
  const charts = new Map(); // canvas id -> Chart
  const state = { measure: "ru", days: 30, daily: [], models: [], tiers: [], currency: "USD" };

  const COLORS = {
    accent: "#4338ca", teal: "#0f766e", amber: "#b45309", rose: "#be123c", sky: "#0369a1",
    slate: "#94a3b8", grid: "#eef0f3", ink: "#4b5563",
  };
  const SERIES = [COLORS.accent, COLORS.teal, COLORS.amber, COLORS.sky, COLORS.rose, "#7c3aed", "#4d7c0f"];
  const MEASURES = {
    ru: { label: "RU", get: (r) => Number(r.ru) },
    device_ms: { label: "Device ms", get: (r) => Number(r.device_ms) },
    cost: { label: "Cost", get: (r) => Number(r.cost) },
  };

  // --- API -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, { raw = false } = {}) {
    const key = sessionStorage.getItem(KEY);
    const resp = await fetch(path, { headers: { authorization: `Bearer ${key}` }, cache: "no-store" });
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try { message = (await resp.json()).error.message || message; } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, message);
    }
    return raw ? resp : resp.json();
  }

  async function download(path, filename) {
    try {
      const blob = await (await api(path, { raw: true })).blob();
      const url = URL.createObjectURL(blob);
      const a = Object.assign(document.createElement("a"), { href: url, download: filename });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (err) { showError(err); }
  }

  // --- formatting ------------------------------------------------------------------------
  const nf = (max = 0) => new Intl.NumberFormat("en-US", { maximumFractionDigits: max });
  const int = (n) => nf(0).format(n);
  function num(n) {
    const a = Math.abs(n);
    return nf(a >= 100 ? 0 : a >= 1 ? 2 : 4).format(n);
  }
  function money(value, currency = state.currency) {
    const n = Number(value);
    const a = Math.abs(n);
    const digits = a === 0 || a >= 1 ? 2 : Math.min(8, Math.max(2, 2 - Math.floor(Math.log10(a)) + 1));
    return new Intl.NumberFormat("en-US", {
      style: "currency", currency, minimumFractionDigits: 2, maximumFractionDigits: digits,
    }).format(n);
  }
  // axis ticks: short, significant digits only (never 2.5E-6)
  function tick(v) {
    if (v === 0) return "0";
    if (Math.abs(v) >= 1000) return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(v);
    return new Intl.NumberFormat("en-US", { maximumSignificantDigits: 3 }).format(v);
  }
  function moneyTick(v, currency = state.currency) {
    if (v === 0) return new Intl.NumberFormat("en-US", { style: "currency", currency, maximumFractionDigits: 0 }).format(0);
    return new Intl.NumberFormat("en-US", { style: "currency", currency, maximumSignificantDigits: 2 }).format(v);
  }
  const fixed = (n, digits) => new Intl.NumberFormat("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(n);
  const narrow = () => window.matchMedia("(max-width: 600px)").matches;
  const pct = (x) => `${nf(x < 0.1 ? 2 : 1).format(x * 100)}%`;
  function duration(s) {
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${nf(1).format(s / 3600)} h`;
    return `${nf(1).format(s / 86400)} d`;
  }
  const isoDay = (d) => d.toISOString().slice(0, 10);
  const shortDay = (day) => new Date(`${day}T00:00:00Z`).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  const td = (text, cls = "") => el("td", { class: cls, textContent: text });

  function kpis(target, items) {
    target.replaceChildren(...items.map(([label, value, unit]) => el("div", { class: "kpi" },
      el("dt", { textContent: label }),
      el("dd", {}, value, unit ? el("span", { class: "unit", textContent: unit }) : null))));
  }

  // --- charts ----------------------------------------------------------------------------
  function draw(id, config, summary) {
    const canvas = document.getElementById(id);
    charts.get(id)?.destroy();
    const chart = new Chart(canvas, config);
    charts.set(id, chart);
    if (summary) canvas.setAttribute("aria-label", summary);
    return chart;
  }

  function baseOptions({ stacked = false, horizontal = false, legend = false, fmt = tick } = {}) {
    const valueAxis = { beginAtZero: true, stacked, grid: { color: COLORS.grid }, border: { display: false },
      ticks: { color: COLORS.ink, maxTicksLimit: narrow() ? 4 : 6, callback: (v) => fmt(v) } };
    const catAxis = { stacked, grid: { display: false }, ticks: { color: COLORS.ink, maxRotation: 0, autoSkipPadding: 12 } };
    return {
      responsive: true, maintainAspectRatio: false, animation: false,
      indexAxis: horizontal ? "y" : "x",
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { display: legend, position: "bottom", labels: { boxWidth: 12, boxHeight: 12, color: COLORS.ink } } },
      scales: horizontal ? { x: valueAxis, y: catAxis } : { x: catAxis, y: valueAxis },
    };
  }

  function doughnut(id, labels, values, colors, summary, fmt) {
    return draw(id, {
      type: "doughnut",
      data: { labels, datasets: [{ data: values, backgroundColor: colors, borderColor: "#fff", borderWidth: 2 }] },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, cutout: "62%",
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12, color: COLORS.ink } },
          tooltip: { callbacks: { label: (c) => ` ${c.label}: ${fmt(c.parsed)}` } },
        },
      },
    }, summary);
  }

  // --- tenant view -----------------------------------------------------------------------
  function rangeStart(days) {
    const d = new Date();
    d.setUTCHours(0, 0, 0, 0);
    d.setUTCDate(d.getUTCDate() - (days - 1));
    return d;
  }

  function fillDays(rows, days) {
    const byDay = new Map(rows.map((r) => [r.key, r]));
    const out = [];
    const d = rangeStart(days);
    for (let i = 0; i < days; i += 1) {
      const key = isoDay(d);
      out.push(byDay.get(key) || { key, requests: 0, prompt_tokens: 0, completion_tokens: 0, device_ms: 0, ru: "0", cost: "0" });
      d.setUTCDate(d.getUTCDate() + 1);
    }
    return out;
  }

  async function loadTenant() {
    const start = isoDay(rangeStart(state.days));
    const q = (g) => api(`/v1/usage?group_by=${g}&start=${start}`);
    const period = new Date().toISOString().slice(0, 7);
    const [day, model, tier, recent, invoice] = await Promise.all([
      q("day"), q("model"), q("tier"), api("/v1/usage/recent?limit=25"), api(`/v1/invoices/${period}`),
    ]);
    state.currency = day.currency;
    state.daily = fillDays(day.data, state.days);
    state.models = model.data;
    state.tiers = tier.data;
    $("#who-id").textContent = day.tenant_id;

    const sum = (f) => day.data.reduce((acc, r) => acc + Number(r[f]), 0);
    kpis($("#tenant-kpis"), [
      ["Requests", int(sum("requests"))],
      ["Tokens", int(sum("prompt_tokens") + sum("completion_tokens"))],
      ["Device time", num(sum("device_ms")), "ms"],
      ["Resource Units", num(sum("ru")), "RU"],
      ["Cost", money(day.total_cost)],
    ]);
    drawMeasureCharts();
    drawUnitCost();
    renderRecent(recent.data);
    renderInvoice(invoice, period);
  }

  function drawMeasureCharts() {
    const m = MEASURES[state.measure];
    const cost = state.measure === "cost";
    const fmt = cost ? money : num;
    const axisFmt = cost ? (v) => moneyTick(v) : tick;
    const daily = state.daily;
    const total = daily.reduce((a, r) => a + m.get(r), 0);
    draw("chart-daily", {
      type: "bar",
      data: { labels: daily.map((r) => shortDay(r.key)), datasets: [{
        label: m.label, data: daily.map(m.get), backgroundColor: COLORS.accent, borderRadius: 4, maxBarThickness: 28,
      }] },
      options: { ...baseOptions({ fmt: axisFmt }), plugins: { legend: { display: false },
        tooltip: { callbacks: { label: (c) => ` ${m.label}: ${fmt(c.parsed.y)}` } } } },
    }, `${m.label} by day, last ${state.days} days: total ${fmt(total)}`);
    $("#daily-title").textContent = `${m.label} by day`;

    draw("chart-model", {
      type: "bar",
      data: { labels: state.models.map((r) => r.key), datasets: [{
        label: m.label, data: state.models.map(m.get), backgroundColor: SERIES, borderRadius: 4, maxBarThickness: 26,
      }] },
      options: { ...baseOptions({ horizontal: true, fmt: axisFmt }), plugins: { legend: { display: false },
        tooltip: { callbacks: { label: (c) => ` ${m.label}: ${fmt(c.parsed.x)}` } } } },
    }, `${m.label} by model: ${state.models.map((r) => `${r.key} ${fmt(m.get(r))}`).join(", ") || "no usage"}`);

    doughnut("chart-tier", state.tiers.map((r) => r.key), state.tiers.map(m.get),
      state.tiers.map((r) => (r.key === "flex" ? COLORS.teal : r.key === "priority" ? COLORS.amber : COLORS.accent)),
      `${m.label} by tier: ${state.tiers.map((r) => `${r.key} ${fmt(m.get(r))}`).join(", ") || "no usage"}`, fmt);
  }

  function drawUnitCost() {
    const per1k = state.daily.map((r) => {
      const tokens = r.prompt_tokens + r.completion_tokens;
      return tokens ? (Number(r.cost) / tokens) * 1000 : null;
    });
    const perRu = state.daily.map((r) => (Number(r.ru) ? Number(r.cost) / Number(r.ru) : null));
    const line = (label, data, color, axis) => ({
      label, data, borderColor: color, backgroundColor: color, yAxisID: axis, cubicInterpolationMode: "monotone",
      pointRadius: 3, pointHoverRadius: 5, spanGaps: true, borderWidth: 2,
    });
    const opts = baseOptions({ legend: true, fmt: (v) => moneyTick(v) });
    opts.scales.y.title = { display: !narrow(), text: "per 1,000 tokens", color: COLORS.ink };
    opts.scales.y2 = { ...opts.scales.y, position: "right", grid: { display: false },
      title: { display: !narrow(), text: "per RU", color: COLORS.ink }, ticks: { ...opts.scales.y.ticks } };
    opts.plugins.tooltip = { callbacks: { label: (c) => ` ${c.dataset.label}: ${money(c.parsed.y)}` } };
    const last = (xs) => [...xs].reverse().find((x) => x !== null);
    draw("chart-unit", {
      type: "line",
      data: { labels: state.daily.map((r) => shortDay(r.key)), datasets: [
        line("Cost per 1,000 tokens", per1k, COLORS.accent, "y"),
        line("Cost per RU", perRu, COLORS.amber, "y2"),
      ] },
      options: opts,
    }, `Unit cost by day; latest ${money(last(per1k) ?? 0)} per 1,000 tokens and ${money(last(perRu) ?? 0)} per RU`);
  }

  // "2026-11-27 23:50:24"; a phone shows "11-27 23:50"
  function when(iso) {
    const t = el("time", { dateTime: iso },
      el("span", { class: "opt", textContent: iso.slice(0, 5) }), iso.slice(5, 16).replace("T", " "),
      el("span", { class: "opt", textContent: iso.slice(16, 19) }));
    return t;
  }

  function statusPill(status) {
    // corrections (credit, reversal, adjustment) show their kind instead of a status
    const cls = ["completed", "length", "credit", "reversal", "adjustment"].includes(status) ? "ok"
      : status === "cancelled" ? "warn" : "bad";
    return el("span", { class: `pill ${cls}`, textContent: status });
  }

  function renderRecent(records) {
    const body = $("#recent tbody");
    if (!records.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colSpan: 9, textContent: "No requests yet." })));
      return;
    }
    body.replaceChildren(...records.map((r) => el("tr", { "data-record": r.record_id },
      el("td", {}, when(r.ended_at)),
      td(r.model, "opt"), td(r.service_tier, "opt"), el("td", { class: "opt" }, statusPill(r.kind && r.kind !== "usage" ? r.kind : r.status)),
      td(int(r.prompt_tokens + r.completion_tokens), "num opt"),
      td(fixed(Number(r.device_ms), 1), "num opt"), td(fixed(Number(r.ru), 4), "num"),
      td(money(r.cost, r.currency), "num"),
      el("td", {}, el("button", {
        type: "button", class: "link", textContent: "View",
        ariaLabel: `Receipt for request ${r.request_id}`,
        onclick: () => openReceipt(r.record_id),
      })))));
  }

  function renderInvoice(inv, period) {
    $("#invoice-title").textContent = `Invoice · ${period}`;
    const body = $("#invoice tbody");
    const lines = inv.lines || [];
    body.replaceChildren(...(lines.length ? lines.map((l) => el("tr", {},
      td(`${l.kind === "usage" ? "" : `${l.kind} · `}${l.model} · ${l.service_tier}`),
      td(int(l.requests), "num"), td(int(Number(l.prompt_tokens) + Number(l.completion_tokens)), "num opt"),
      td(fixed(Number(l.device_ms), 1), "num opt"), td(fixed(Number(l.ru), 4), "num"),
      td(money(l.amount, inv.currency), "num"))) : [el("tr", {}, el("td", { class: "empty", colSpan: 6, textContent: "Nothing billed this month yet." }))]));
    $("#invoice tfoot").replaceChildren(el("tr", {}, el("td", { textContent: "Total" }),
      td(""), td("", "opt"), td("", "opt"), td(""),
      td(money(inv.total, inv.currency), "num")));
    $("#invoice-note").textContent = `Rounded ${inv.rounding}. Exact total ${inv.exact_total} ${inv.currency}.`;
    $("#invoice-csv").onclick = () => download(`/v1/invoices/${period}?format=csv`, `invoice-${period}.csv`);
    $("#invoice-json").onclick = () => download(`/v1/invoices/${period}`, `invoice-${period}.json`);
  }

  function kvRows(obj) {
    const rows = [];
    for (const [k, v] of Object.entries(obj)) {
      rows.push(el("dt", { textContent: k }), el("dd", { textContent: typeof v === "object" && v !== null ? JSON.stringify(v) : String(v) }));
    }
    return rows;
  }

  function receiptActions(recordId) {
    // Created here rather than in index.html: the buttons exist only for signed receipts.
    let box = $("#receipt-actions");
    if (!box) {
      box = el("p", { id: "receipt-actions", class: "small" });
      $("#receipt-note").after(box);
    }
    box.replaceChildren(
      el("button", { type: "button", class: "btn", id: "receipt-download", textContent: "Download receipt (JSON)",
        onclick: () => download(`/v1/receipts/${encodeURIComponent(recordId)}`, `receipt-${recordId}.json`) }),
      " ",
      el("button", { type: "button", class: "btn btn-quiet", id: "receipt-key", textContent: "Public key (JSON)",
        onclick: () => download("/v1/ledger/key", "ledger-key.json") }));
    box.hidden = false;
  }

  async function openReceipt(recordId) {
    const dialog = $("#receipt");
    let data;
    let receipt = null;
    try {
      receipt = await api(`/v1/receipts/${encodeURIComponent(recordId)}`);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 404) { showError(err); return; }
      data = await api(`/v1/usage/records/${encodeURIComponent(recordId)}`).catch((e) => { showError(e); });
      if (!data) return;
    }
    if (receipt) {
      const cp = receipt.checkpoint;
      $("#receipt-note").textContent = `Signed receipt: entry ${int(receipt.leaf_index)} of the ${int(cp.tree_size)}-entry ledger ` +
        `${cp.origin}, in checkpoint ${cp.number} signed ${cp.timestamp} by key ${cp.key_id}. Save it with the public key and check it ` +
        "offline: infermeter receipt verify receipt.json --key ledger-key.json";
      receiptActions(recordId);
      const proof = {
        leaf_index: receipt.leaf_index, leaf_hash: receipt.leaf_hash,
        inclusion_proof: `${receipt.inclusion_proof.length} hashes: ${receipt.inclusion_proof.join(" ")}`,
        checkpoint: cp.number, tree_size: cp.tree_size, root_hash: cp.root_hash, signed_at: cp.timestamp,
        key_id: cp.key_id, signature: cp.signature,
      };
      $("#receipt-body").replaceChildren(...kvRows(receipt.entry.event.data),
        el("dt", { class: "kv-head", textContent: "Proof" }), el("dd", { textContent: "" }), ...kvRows(proof));
    } else {
      $("#receipt-note").textContent = "No signed receipt is available for this request yet; this is its usage record from the ledger.";
      const box = $("#receipt-actions");
      if (box) box.hidden = true;
      $("#receipt-body").replaceChildren(...kvRows(data));
    }
    dialog.showModal();
  }

  // --- operator view ---------------------------------------------------------------------
  async function loadOperator(overview) {
    const start = isoDay(rangeStart(30));
    const [ov, tenants, daily] = await Promise.all([
      overview ? Promise.resolve(overview) : api("/v1/admin/overview"),
      api("/v1/admin/usage?group_by=tenant"),
      api(`/v1/admin/usage?group_by=day&start=${start}`),
    ]);
    state.currency = ov.currency;
    $("#who-id").textContent = "admin key";
    const d = ov.device_ms;
    $("#operator-sub").textContent = `Where every device-millisecond went · up ${duration(ov.uptime_s)} since ${ov.started_at.slice(0, 16).replace("T", " ")} UTC`;
    const utilization = ov.devices.length ? Math.max(...ov.devices.map((x) => x.utilization)) : 0;
    kpis($("#operator-kpis"), [
      ["Device utilization", pct(utilization)],
      ["Billed device time", num(d.billed), "ms"],
      ["Warm-up (unbilled)", num(d.warmup), "ms"],
      ["Unattributed", num(d.unattributed), "ms"],
      ["Queue depth", int(ov.queue_depth)],
      ["Billed to date", money(tenants.total_cost)],
    ]);

    const engines = ov.engines;
    const uses = [["billed", "Billed", COLORS.accent], ["warmup", "Warm-up", COLORS.amber], ["unattributed", "Unattributed", COLORS.slate]];
    draw("chart-engines", {
      type: "bar",
      data: { labels: engines.map((e) => e.engine_id), datasets: uses.map(([k, label, color]) => ({
        label, data: engines.map((e) => e.device_ms[k]), backgroundColor: color, borderRadius: 3, maxBarThickness: 30,
      })) },
      options: { ...baseOptions({ stacked: true, horizontal: true, legend: true }),
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12, color: COLORS.ink } },
          tooltip: { callbacks: { label: (c) => ` ${c.dataset.label}: ${num(c.parsed.x)} ms` } } } },
    }, `Device ms by engine: ${engines.map((e) => `${e.engine_id} billed ${num(e.device_ms.billed)}, warm-up ${num(e.device_ms.warmup)}, unattributed ${num(e.device_ms.unattributed)}`).join("; ")}`);
    doughnut("chart-split", uses.map((u) => u[1]), uses.map(([k]) => d[k]), uses.map((u) => u[2]),
      `Device time since start: billed ${num(d.billed)} ms, warm-up ${num(d.warmup)} ms, unattributed ${num(d.unattributed)} ms`,
      (v) => `${num(v)} ms`);

    const rows = tenants.data;
    draw("chart-tenants", {
      type: "bar",
      data: { labels: rows.map((r) => r.name), datasets: [{
        label: `Cost (${tenants.currency})`, data: rows.map((r) => Number(r.cost)), backgroundColor: COLORS.accent, borderRadius: 4, maxBarThickness: 40,
      }] },
      options: { ...baseOptions({ fmt: (v) => moneyTick(v, tenants.currency) }), plugins: { legend: { display: false },
        tooltip: { callbacks: { label: (c) => ` ${money(c.parsed.y, tenants.currency)}` } } } },
    }, `Cost by tenant: ${rows.map((r) => `${r.name} ${money(r.cost, tenants.currency)}`).join(", ") || "no tenants"}`);

    const days = fillDays(daily.data, 30);
    const opts = baseOptions({ legend: true });
    opts.scales.y.title = { display: !narrow(), text: "device ms", color: COLORS.ink };
    opts.scales.y2 = { beginAtZero: true, position: "right", grid: { display: false }, border: { display: false },
      ticks: { color: COLORS.ink, maxTicksLimit: 6, callback: (v) => tick(v) }, title: { display: !narrow(), text: "RU", color: COLORS.ink } };
    draw("chart-ops-daily", {
      type: "bar",
      data: { labels: days.map((r) => shortDay(r.key)), datasets: [
        { type: "bar", label: "Device ms", data: days.map((r) => Number(r.device_ms)), backgroundColor: COLORS.accent, borderRadius: 3, maxBarThickness: 18, yAxisID: "y" },
        { type: "line", label: "RU", data: days.map((r) => Number(r.ru)), borderColor: COLORS.amber, backgroundColor: COLORS.amber, pointRadius: 2, borderWidth: 2, cubicInterpolationMode: "monotone", yAxisID: "y2" },
      ] },
      options: opts,
    }, `Billed device time and RU by day across tenants, last 30 days`);

    $("#engines tbody").replaceChildren(...engines.map((e) => el("tr", {},
      td(e.engine_id, "mono"), td(e.model, "opt"), td(e.backend, "opt"), td(e.precision), td(e.device, "opt"),
      td(fixed(e.device_ms.billed, 1), "num"), td(fixed(e.device_ms.warmup, 1), "num"),
      td(fixed(e.device_ms.unattributed, 1), "num"), td(pct(e.utilization), "num"))));
    $("#tenants tbody").replaceChildren(...(rows.length ? rows.map((r) => el("tr", {},
      el("td", {}, r.name, el("div", { class: "mono muted small", textContent: r.key })),
      td(int(r.requests), "num"), td(int(r.prompt_tokens + r.completion_tokens), "num opt"),
      td(fixed(r.device_ms, 1), "num opt"), td(fixed(Number(r.ru), 4), "num"), td(money(r.cost, tenants.currency), "num"))) :
      [el("tr", {}, el("td", { class: "empty", colSpan: 6, textContent: "No tenants yet." }))]));
  }

  // --- sign in and routing ---------------------------------------------------------------
  function showError(err) {
    const box = $("#view-error");
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
  }

  function show(view) {
    for (const id of ["signin", "tenant-view", "operator-view"]) $(`#${id}`).hidden = id !== view;
    $("#who").hidden = view === "signin";
    $("#view-error").hidden = true;
    document.body.dataset.view = view;
  }

  async function enter() {
    document.body.dataset.state = "loading";
    let overview = null;
    try {
      overview = await api("/v1/admin/overview");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403) throw err;
    }
    if (overview) {
      $("#who-role").textContent = "Operator";
      show("operator-view");
      await loadOperator(overview);
    } else {
      $("#who-role").textContent = "Tenant";
      show("tenant-view");
      await loadTenant();
    }
    document.body.dataset.state = "ready";
    $("#main").focus({ preventScroll: true });
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    for (const chart of charts.values()) chart.destroy();
    charts.clear();
    show("signin");
    document.body.dataset.state = "signed-out";
    const box = $("#signin-error");
    box.textContent = message || "";
    box.hidden = !message;
    $("#api-key").setAttribute("aria-invalid", message ? "true" : "false");
    $("#api-key").value = "";
    $("#api-key").focus();
  }

  async function start() {
    if (typeof Chart === "undefined") {
      showError("The chart library did not load (dashboard/static/vendor/chart.umd.min.js).");
      return;
    }
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.color = COLORS.ink;

    $("#signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const input = $("#api-key");
      const key = input.value.trim();
      if (!key) { signOut("Enter an API key."); return; }
      sessionStorage.setItem(KEY, key);
      $("#signin-submit").disabled = true;
      try {
        await enter();
      } catch (err) {
        signOut(err instanceof ApiError && err.status === 401 ? `Sign-in failed: ${err.message}` : `Could not load the dashboard: ${err.message}`);
      } finally {
        $("#signin-submit").disabled = false;
      }
    });
    $("#sign-out").addEventListener("click", () => signOut());
    $("#receipt-close").addEventListener("click", () => $("#receipt").close());
    $("#range").addEventListener("change", (ev) => {
      state.days = Number(ev.target.value);
      loadTenant().catch(showError);
    });
    $("#measure").addEventListener("click", (ev) => {
      const btn = ev.target.closest("button[data-measure]");
      if (!btn) return;
      state.measure = btn.dataset.measure;
      for (const b of $("#measure").querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === btn));
      drawMeasureCharts();
    });
    $("#refresh").addEventListener("click", () => loadOperator().catch(showError));
    $("#export-all").addEventListener("click", () => download("/v1/admin/export/usage.jsonl", "usage-all.jsonl"));
    $("#export-mine").addEventListener("click", () => download("/v1/usage/export.jsonl", "usage.jsonl"));

    if (sessionStorage.getItem(KEY)) {
      try { await enter(); } catch (err) { signOut(`Signed out: ${err.message}`); }
    } else {
      signOut();
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
