// Rating rows of the feedback page: 👍 at once, 👎 with an optional correction; then the page reloads.
"use strict";
(function () {
  const csrf = document.querySelector("main").dataset.csrf;
  document.querySelectorAll("#completions tr[data-id] button[data-rating]").forEach((b) => {
    b.addEventListener("click", async () => {
      const rating = Number(b.dataset.rating);
      const body = {completion_id: b.closest("tr").dataset.id, rating: rating};
      if (rating === -1) {
        const correction = window.prompt("What should the answer have been? (optional)");
        if (correction) body.correction = correction;
      }
      const r = await fetch("/console/feedback/rate", {method: "POST", body: JSON.stringify(body),
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}});
      if (r.ok) window.location.reload();
    });
  });
})();
