// cirelay console: following the event stream live (the page reads fine without it).
// No inline script: the Content-Security-Policy allows only files served by cirelay.
(function () {
  "use strict";
  function follow(button) {
    var rows = document.getElementById("event-rows");
    var status = document.getElementById("follow-status");
    var template = document.getElementById("event-row");
    var jobBase = document.getElementById("job-link-base").dataset.href;
    var wantedJob = button.dataset.job;
    var source = null;
    button.addEventListener("click", function () {
      if (source) {
        source.close();
        source = null;
        button.setAttribute("aria-pressed", "false");
        button.textContent = "Follow live";
        status.textContent = "Stopped following.";
        return;
      }
      source = new EventSource(button.dataset.stream);
      button.setAttribute("aria-pressed", "true");
      button.textContent = "Stop following";
      status.textContent = "Following: new events appear at the top.";
      source.onmessage = null;
      source.addEventListener("error", function () {
        status.textContent = "The stream was interrupted; reconnecting…";
      });
      var onEvent = function (message) {
        var event = JSON.parse(message.data);
        var jobId = event.data && (event.data.id || event.data.job_id);
        if (wantedJob && jobId !== wantedJob) { return; }
        var row = template.content.firstElementChild.cloneNode(true);
        var cells = row.children;
        cells[0].textContent = event.sequence;
        cells[1].textContent = (event.time || "").replace("T", " ").replace("Z", "");
        cells[2].textContent = event.type;
        cells[3].firstElementChild.textContent = event.subject || "—";
        var link = cells[4].firstElementChild;
        if (jobId && String(jobId).indexOf("job_") === 0) {
          link.href = jobBase.replace("JOB", jobId);
          link.textContent = jobId;
        } else {
          cells[4].textContent = "—";
        }
        row.classList.add("new-event");
        rows.insertBefore(row, rows.firstElementChild);
        status.textContent = "Following: event " + event.sequence + " arrived.";
      };
      // the stream names each message with the event's type
      source.onmessage = onEvent;
      ["submitted", "running", "succeeded", "failed", "paused", "cancelled"].forEach(function (verb) {
        source.addEventListener("com.cirelay.job." + verb, onEvent);
      });
      source.addEventListener("com.cirelay.notification.quarantined", onEvent);
      source.addEventListener("com.cirelay.subscription.disabled", onEvent);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("follow");
    if (button) { follow(button); }
  });
})();
