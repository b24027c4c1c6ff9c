// The usage chart: tokens per day (bars) and cost per day (line), from /console/usage.json.
"use strict";
(function () {
  // Tokens (bars) and cost (line) per model or per key, over the same 30 days.
  function bars(id, rows, field) {
    const el = document.getElementById(id);
    if (!el) return;
    new Chart(el, {
      data: {
        labels: rows.map((r) => r[field] || "—"),
        datasets: [
          {type: "bar", label: "tokens", data: rows.map((r) => r.total_tokens), yAxisID: "tokens"},
          {type: "line", label: "cost (USD)", data: rows.map((r) => Number(r.cost_usd)), yAxisID: "cost"},
        ],
      },
      options: {maintainAspectRatio: false, animation: false, plugins: {title: {display: true, text: "per " + field}},
                scales: {tokens: {position: "left", beginAtZero: true},
                         cost: {position: "right", beginAtZero: true, grid: {drawOnChartArea: false}}}},
    });
  }
  const canvas = document.getElementById("usage-chart");
  if (!canvas || typeof Chart === "undefined") return;
  fetch(canvas.dataset.src, {headers: {Accept: "application/json"}})
    .then((r) => r.json())
    .then((report) => {
      bars("usage-models", report.models.data, "model");
      bars("usage-keys", report.keys.data, "key");
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
