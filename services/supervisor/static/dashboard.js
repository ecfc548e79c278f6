// The supervisor's dashboard: polls GET api/dashboard (the supervisor only) and redraws.
// Charts are uPlot (vendored under static/vendor/uplot); everything else is plain DOM.
"use strict";

const POLL_MS = 1500;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
const $ = (id) => document.getElementById(id);

// -- formatting (null / undefined are "–": missing is never shown as 0) -------------------------
const missing = (v) => v === null || v === undefined || Number.isNaN(v);
const num = (v, digits = 2) => (missing(v) ? "–" : Number(v).toFixed(digits));
const pct = (v, digits = 1) => (missing(v) ? "–" : (100 * v).toFixed(digits) + "%");
const ms = (v) => (missing(v) ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(1) + " ms");
const clock = (t) => (missing(t) ? "–" : new Date(t * 1000).toLocaleTimeString());
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const badge = (text, cls = text) => `<span class="badge ${esc(cls)}">${esc(text)}</span>`;

// -- charts ------------------------------------------------------------------------------------
// One uPlot per chart; rebuilt only when the set of variants changes.
const CHARTS = [
  { id: "chart-rps", fields: ["rps"], fmt: (v) => num(v, 1) },
  { id: "chart-errors", fields: ["error_rate"], fmt: (v) => pct(v, 1), range: (u, min, max) => [0, Math.max(0.01, max || 0)] },
  { id: "chart-latency", fields: ["p50_ms", "p99_ms"], fmt: (v) => num(v, 1) },
  { id: "chart-accuracy", fields: ["accuracy"], fmt: (v) => pct(v, 1), range: (u, min, max) => [Math.min(min ?? 1, 0.9), 1] },
  { id: "chart-weights", fields: ["weight"], fmt: (v) => num(v, 0), range: () => [0, 100] },
];
let plots = [];
let plottedVariants = "";

function chartWidth(id) {
  return Math.max(300, $(id).parentElement.clientWidth - 30);
}

function buildCharts(variants) {
  plots.forEach((p) => p.destroy());
  plots = CHARTS.map((chart) => {
    const series = [{}];
    variants.forEach((v, i) => chart.fields.forEach((field) => series.push({
      label: chart.fields.length > 1 ? `${v} ${field.replace("_ms", "")}` : v,
      stroke: COLORS[i % COLORS.length],
      width: 2,
      dash: field === "p50_ms" ? [6, 4] : undefined,
      value: (u, val) => chart.fmt(val),
    })));
    const opts = {
      width: chartWidth(chart.id), height: 200, series,
      scales: chart.range ? { x: { time: true }, y: { range: chart.range } } : { x: { time: true } },
      axes: [{}, { values: (u, ticks) => ticks.map(chart.fmt), size: 64 }],
      legend: { live: false },
    };
    return new uPlot(opts, [[], ...series.slice(1).map(() => [])], $(chart.id));
  });
  plottedVariants = variants.join("\n");
}

function drawCharts(series) {
  const variants = Object.keys(series.variants);
  if (variants.join("\n") !== plottedVariants) buildCharts(variants);
  CHARTS.forEach((chart, i) => {
    const data = [series.t];
    variants.forEach((v) => chart.fields.forEach((f) => data.push(series.variants[v][f])));
    plots[i].setData(data);
  });
}

window.addEventListener("resize", () => plots.forEach((p, i) => p.setSize({ width: chartWidth(CHARTS[i].id), height: 200 })));

// -- panels ------------------------------------------------------------------------------------
function renderRollout(d) {
  const s = d.status;
  $("rollout-name").textContent = s.rollout;
  $("phase").outerHTML = `<span id="phase" class="badge ${esc(s.phase)}">${esc(s.phase.replace("_", " "))}</span>`;
  $("mode").textContent = `${s.kind} / ${s.mode ?? "–"}`;
  $("candidate-version").textContent = s.candidate_version ?? "–";
  $("step").textContent = missing(s.step_index) ? "not started"
    : `${s.step_index + 1} of ${s.steps.length}: candidate at ${num(s.candidate_weight, 0)}%`;
  $("failures").textContent = `${s.failures} of ${s.failure_limit}`;
  $("streak").textContent = s.inconclusive_streak;
  $("last-check").textContent = clock(s.last_check_at);
  const wait = missing(s.next_check_at) ? null : Math.max(0, s.next_check_at - d.now);
  $("next-check").textContent = missing(wait) ? "–" : `${clock(s.next_check_at)} (in ${wait.toFixed(0)} s)`;
  $("decision-count").textContent = d.decisions_total;
  $("steps").innerHTML = s.steps.map((w, i) => {
    const cls = missing(s.step_index) ? "" : i < s.step_index || s.phase === "promoted" ? "done" : i === s.step_index ? "current" : "";
    return `<li class="${cls}">${num(w, 0)}%</li>`;
  }).join("");
  $("last-explanation").textContent = s.last_decision ? s.last_decision.explanation : "No decision yet.";
  const seq = s.sequential || [];
  $("sequential").innerHTML = seq.length === 0 ? "" :
    "<tr><th>sequential test</th><th>candidate</th><th>stable</th><th>log Λ</th><th>threshold</th><th>p (always valid)</th><th></th></tr>" +
    seq.map((t) => `<tr><td>${esc(t.test)}</td><td class="num">${num(t.candidate_value, 4)} (n=${t.candidate_n ?? "–"})</td>` +
      `<td class="num">${num(t.stable_value, 4)} (n=${t.stable_n ?? "–"})</td><td class="num">${num(t.statistic, 2)}</td>` +
      `<td class="num">${num(t.threshold, 2)}</td><td class="num">${num(t.p_value, 4)}</td>` +
      `<td>${t.rejected ? badge("rejected", "fail") : ""}</td></tr>`).join("");
}

function renderVariants(d) {
  $("rate-window").textContent = d.rate_window_s;
  $("variants").tBodies[0].innerHTML = d.variants.map((v, i) => `
    <tr data-variant="${esc(v.variant)}">
      <td><span class="swatch" style="background:${COLORS[i % COLORS.length]}"></span>${esc(v.variant)}
        ${v.role ? `<span class="muted">(${esc(v.role)})</span>` : ""} ${v.ejected ? badge("ejected", "fail") : ""}</td>
      <td class="num">${esc(v.version ?? "–")}</td>
      <td class="num weight">${missing(v.weight) ? "–" : num(v.weight, 0) + "%"}</td>
      <td class="num requests">${v.requests_total ?? "–"}</td>
      <td class="num rps">${num(v.rps, 1)}</td>
      <td class="num">${pct(v.error_rate, 2)}</td>
      <td class="num">${ms(v.p50_ms)}</td>
      <td class="num">${ms(v.p99_ms)}</td>
      <td class="num">${pct(v.accuracy_window)}</td>
      <td class="num accuracy">${pct(v.accuracy)} <span class="muted">(n=${v.labels ?? "–"})</span></td>
      <td class="num">${num(v.mean_reward, 3)} <span class="muted">(n=${v.rewards ?? "–"})</span></td>
    </tr>`).join("");
}

function renderPolicy(d) {
  $("policy-kind").innerHTML = d.policy.kind ? badge(d.policy.kind, "") : "";
  const shadow = d.shadow;
  $("shadow").innerHTML = !shadow ? `<p class="muted">No shadow variants under this policy.</p>` :
    "<table><tr><th>shadow</th><th>mirrored</th><th>compared rows</th><th>label agreement</th><th>mean |Δp|</th>" +
    "<th>p99 primary / shadow</th><th>errors</th></tr>" +
    Object.entries(shadow.shadows).map(([name, s]) => `<tr><td>${esc(name)}</td><td class="num">${s.mirrored}</td>` +
      `<td class="num">${s.compared_rows}</td><td class="num">${pct(s.label_agreement_rate)}</td>` +
      `<td class="num">${num(s.mean_abs_prob_diff, 4)}</td>` +
      `<td class="num">${ms(s.latency?.primary_p99_ms)} / ${ms(s.latency?.shadow_p99_ms)}</td>` +
      `<td class="num">${s.error_count}</td></tr>`).join("") + "</table>";
  const arms = d.arms;
  $("arms").innerHTML = !arms ? `<p class="muted">No bandit arms or A/B arms under this policy.</p>` :
    `<table><tr><th>arm</th><th>${esc(arms.counted_by)}</th><th>share</th><th></th><th>mean reward</th></tr>` +
    Object.entries(arms.arms).map(([name, a]) => `<tr><td>${esc(name)}</td><td class="num">${a.count}</td>` +
      `<td class="num">${pct(a.share)}</td><td><span class="bar" style="width:${Math.round(200 * (a.share || 0))}px"></span></td>` +
      `<td class="num">${num(a.mean_reward, 3)}</td></tr>`).join("") + "</table>";
  const ab = d.ab;
  $("ab").innerHTML = !ab ? "" :
    `<p>A/B verdict: ${badge(ab.verdict, ab.verdict.endsWith("better") ? "pass" : "inconclusive")} ` +
    `${esc(ab.treatment)} − ${esc(ab.control)} = ${num(ab.difference, 4)}, CI [${num(ab.ci?.[0], 4)}, ${num(ab.ci?.[1], 4)}], ` +
    `p = ${num(ab.p_value, 4)}, always-valid p = ${num(ab.always_valid_p_value, 4)}</p>`;
}

function renderDrift(drift) {
  if (!drift.connected) {
    $("drift").innerHTML = `<p class="muted" id="drift-missing">Drift input is not connected: ${esc(drift.why)}</p>`;
    return;
  }
  $("drift").innerHTML = `<p>Overall PSI ${num(drift.overall_psi, 3)} (${esc(drift.overall_feature)}) ${badge(drift.level, drift.level === "ok" ? "pass" : "inconclusive")}` +
    ` over ${drift.rows} live rows; warn ${drift.warn}, block ${drift.block}</p>` +
    "<table class=\"compact\"><tr><th>feature</th><th>PSI</th><th>KS</th><th>level</th></tr>" +
    drift.features.map((f) => `<tr><td>${esc(f.name)}</td><td class="num">${num(f.psi, 3)}</td>` +
      `<td class="num">${num(f.ks_statistic, 3)}</td><td>${esc(f.level)}</td></tr>`).join("") + "</table>";
}

let shownDecisions = "";
function renderDecisions(d) {
  const key = `${d.decisions_total}:${d.decisions[0]?.check}:${d.decisions.length}`;
  if (key === shownDecisions) return; // keep open <details> open between polls
  shownDecisions = key;
  const open = new Set([...document.querySelectorAll("#decisions details[open]")].map((el) => el.dataset.check));
  $("decisions").innerHTML = d.decisions.length === 0 ? `<li class="muted">No decision yet.</li>` : d.decisions.map((r) => `
    <li><details data-check="${r.check}" ${open.has(String(r.check)) ? "open" : ""}>
      <summary><b>#${r.first_check !== r.check ? `${r.first_check}–${r.check}` : r.check}</b> ${clock(r.at)} ${badge(r.verdict)}
        <b class="action">${esc(r.action.kind)}</b>${r.repeated > 1 ? ` <span class="muted">×${r.repeated}</span>` : ""}
        ${missing(r.action.candidate_weight) ? "" : `→ ${num(r.action.candidate_weight, 0)}%`}
        <span class="muted">[${esc(r.apply.status)}]</span><span class="explain">${esc(r.explanation)}</span></summary>
      <div class="evidence"><p>${esc(r.explanation)}</p>${evidenceTable(r)}</div>
    </details></li>`).join("");
}

function evidenceTable(r) {
  const rows = r.rules.map((x) => `<tr><td>${esc(x.rule)}</td><td>${badge(x.verdict)}</td>` +
    `<td class="num">${num(x.candidate_value, 4)} (n=${x.candidate_n ?? "–"})</td>` +
    `<td class="num">${num(x.stable_value, 4)} (n=${x.stable_n ?? "–"})</td><td class="num">${num(x.threshold, 4)}</td>` +
    `<td class="num">${num(x.p_value, 4)}</td><td class="reason">${esc(x.reason)}</td></tr>`);
  const seq = r.sequential.map((x) => `<tr><td>sequential: ${esc(x.test)}</td><td>${x.rejected ? badge("rejected", "fail") : badge("not rejected", "none")}</td>` +
    `<td class="num">${num(x.candidate_value, 4)} (n=${x.candidate_n ?? "–"})</td>` +
    `<td class="num">${num(x.stable_value, 4)} (n=${x.stable_n ?? "–"})</td><td class="num">log Λ ≥ ${num(x.threshold, 2)}</td>` +
    `<td class="num">${num(x.p_value, 4)}</td><td class="reason">log Λ = ${num(x.statistic, 3)}</td></tr>`);
  if (rows.length + seq.length === 0) return `<p class="muted">No rule evaluated at this check.</p>`;
  return "<table class=\"compact\"><tr><th>rule</th><th>verdict</th><th>candidate</th><th>stable</th><th>threshold</th><th>p</th><th>reason</th></tr>" +
    rows.concat(seq).join("") + "</table>";
}

// -- polling -----------------------------------------------------------------------------------
function render(d) {
  $("router-url").textContent = d.router_url;
  const errors = Object.entries(d.router_errors || {});
  $("router-errors").hidden = errors.length === 0 && !d.status.router_error;
  $("router-errors").textContent = [d.status.router_error, ...errors.map(([p, e]) => `${p}: ${e}`)].filter(Boolean).join(" · ");
  renderRollout(d);
  renderVariants(d);
  drawCharts(d.series);
  renderPolicy(d);
  renderDrift(d.drift);
  renderDecisions(d);
  $("updated").textContent = clock(d.now);
}

async function poll() {
  try {
    const response = await fetch("api/dashboard", { cache: "no-store" });
    if (!response.ok) throw new Error(`GET api/dashboard answered ${response.status}`);
    render(await response.json());
    $("connection").className = "badge ok";
    $("connection").textContent = "live";
  } catch (err) {
    $("connection").className = "badge error";
    $("connection").textContent = `supervisor unreachable (${err.message})`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
