// The usage charts: tokens and cost per day (from /console/usage.json), per model and per key (from the page).
"use strict";
(function () {
  // Tokens (bars) and cost (line) per model or per key: the tables' rows, which the page carries.
  function bars(id, field) {
    const el = document.getElementById(id);
    if (!el) return;
    const rows = JSON.parse(el.dataset.rows);
    new Chart(el, {
      data: {
        labels: rows.map((r) => r[field] || "—"),
        datasets: [
          {type: "bar", label: "tokens", data: rows.map((r) => r.total_tokens), yAxisID: "tokens"},
          {type: "line", label: "cost (USD)", data: rows.map((r) => Number(r.cost_usd)), yAxisID: "cost"},
        ],
      },
      options: {maintainAspectRatio: false, animation: false, plugins: {title: {display: true, text: "per " + field + ", all time"}},
                scales: {tokens: {position: "left", beginAtZero: true},
                         cost: {position: "right", beginAtZero: true, grid: {drawOnChartArea: false}}}},
    });
  }
  const canvas = document.getElementById("usage-chart");
  if (!canvas || typeof Chart === "undefined") return;
  bars("usage-models", "model");
  bars("usage-keys", "key");
  fetch(canvas.dataset.src, {headers: {Accept: "application/json"}})
    .then((r) => r.json())
    .then((report) => {
      const rows = report.days.data;
      new Chart(canvas, {
        data: {
          labels: rows.map((r) => r.day),
          datasets: [
            {type: "bar", label: "prompt tokens", data: rows.map((r) => r.prompt_tokens), stack: "t", yAxisID: "tokens"},
            {type: "bar", label: "completion tokens", data: rows.map((r) => r.completion_tokens), stack: "t", yAxisID: "tokens"},
            {type: "line", label: "cost (USD)", data: rows.map((r) => Number(r.cost_usd)), yAxisID: "cost"},
          ],
        },
        options: {
          maintainAspectRatio: false, animation: false,
          scales: {tokens: {position: "left", stacked: true, beginAtZero: true},
                   cost: {position: "right", beginAtZero: true, grid: {drawOnChartArea: false}}},
        },
      });
    });
})();
