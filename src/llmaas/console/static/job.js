// A fine-tuning job's page: polls the job (status, events, checkpoints) while it runs and draws its loss.
"use strict";
(function () {
  const box = document.getElementById("job");
  if (!box) return;
  const DONE = ["succeeded", "failed", "cancelled"];
  const canvas = document.getElementById("loss-chart");
  let chart = null;

  function draw(events) {
    const points = events.filter((e) => e.type === "metrics" && e.data && e.data.train_loss !== undefined)
      .map((e) => ({x: e.data.step, y: e.data.train_loss}));
    if (typeof Chart === "undefined") return;
    if (chart === null) {
      chart = new Chart(canvas, {type: "line", data: {datasets: [{label: "train loss", data: points}]},
        options: {maintainAspectRatio: false, animation: false, scales: {x: {type: "linear", title: {display: true, text: "step"}}}}});
    } else {
      chart.data.datasets[0].data = points;
      chart.update();
    }
  }

  function show(live) {
    const job = live.job;
    document.getElementById("job-status").textContent = job.status;
    if (job.fine_tuned_model) {
      const p = document.getElementById("job-model");
      p.querySelector("code").textContent = job.fine_tuned_model;
      p.hidden = false;
      document.getElementById("try-model").href = "/console/playground?model=" + encodeURIComponent(job.fine_tuned_model);
    }
    if (job.error) {
      const e = document.getElementById("job-error");
      e.textContent = job.error.message;
      e.hidden = false;
    }
    const events = document.getElementById("events");
    events.replaceChildren(...live.events.map((ev) => {
      const li = document.createElement("li");
      li.textContent = ev.message;
      return li;
    }));
    const cps = document.getElementById("checkpoints");
    cps.replaceChildren(...live.checkpoints.map((c) => {
      const tr = document.createElement("tr");
      for (const v of [c.step_number, c.fine_tuned_model_checkpoint]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      return tr;
    }));
    draw(live.events);
    const cancel = document.getElementById("cancel");
    if (cancel && DONE.includes(job.status)) cancel.hidden = true;
    return DONE.includes(job.status);
  }

  async function poll() {
    try {
      const r = await fetch(box.dataset.live, {headers: {Accept: "application/json"}});
      if (r.ok && show(await r.json())) return;
    } catch (e) { /* a missed poll: try again */ }
    setTimeout(poll, 2000);
  }
  poll();
})();
