// vmm's pages: live updates from the server's events, the console log followed live.
// No inline script anywhere (CSP default-src 'self'); htmx does the requests.
(function () {
  "use strict";

  // Reload every [data-live=KIND] fragment from its data-src (coalesced: one reload per burst);
  // with JOBKIND, only those whose data-kinds lists it (a section that follows a kind of job).
  var pending = {};
  function reload(kind, jobKind) {
    var key = jobKind ? kind + ":" + jobKind : kind;
    if (pending[key]) return;
    pending[key] = setTimeout(function () {
      pending[key] = null;
      document.querySelectorAll('[data-live="' + kind + '"]').forEach(function (el) {
        if (!el.dataset.src || !window.htmx) return;
        if (jobKind && (el.dataset.kinds || "").split(",").indexOf(jobKind) < 0) return;
        // the element itself as the source: htmx queues requests per source element, keeping
        // only the last one waiting (from <body>, the default, a third reload would drop the second)
        var opts = { source: el, target: el, swap: "outerHTML" };
        if (el.dataset.select) opts.select = el.dataset.select;
        htmx.ajax("GET", el.dataset.src, opts);
      });
    }, 30);
  }

  var snapshots = 0;
  function connectEvents() {
    var url = document.body && document.body.dataset.events;
    if (!url || !window.EventSource) return;
    var live = document.getElementById("live");
    var source = new EventSource(url);
    source.addEventListener("open", function () { if (live) live.classList.add("on"); });
    source.addEventListener("error", function () { if (live) live.classList.remove("on"); });
    // (Re)connected: catch up on whatever changed between the page's render and now (a
    // section that follows jobs only after a reconnection: a job may have ended meanwhile).
    source.addEventListener("snapshot", function () {
      reload("vms"); reload("jobs");
      if (snapshots++) reload("job-done");
    });
    source.addEventListener("vm", function () { reload("vms"); });
    source.addEventListener("vm-removed", function () { reload("vms"); });
    source.addEventListener("job", function (e) {
      reload("jobs");
      var job;
      try { job = JSON.parse(e.data); } catch (err) { return; }
      if (job && job.state !== "running") reload("job-done", job.kind);
    });
    source.addEventListener("overflow", function () { source.close(); setTimeout(connectEvents, 500); });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function followConsole() {
    var pre = document.getElementById("console");
    if (!pre || !window.EventSource) return;
    var source = new EventSource(pre.dataset.follow);
    source.addEventListener("log", function (e) {
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(document.createTextNode(JSON.parse(e.data)));
      if (pre.textContent.length > 400000) pre.textContent = pre.textContent.slice(-200000);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // A successful create empties the form's name field for the next one.
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail.elt;
    if (form && form.id === "create-form" && e.detail.successful) form.reset();
    if (form && form.id === "forward-form" && e.detail.successful) form.reset();
  });

  document.addEventListener("DOMContentLoaded", function () {
    connectEvents();
    followConsole();
  });
})();
