// The browser terminal: xterm.js <-> WebSocket (binary frames are terminal data; a text frame
// is a JSON control message: resize). Vendored xterm.js, no inline script (CSP).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("terminal");
    if (!box || !window.Terminal) return;
    var term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000,
                              fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace' });
    var fit = window.FitAddon ? new FitAddon.FitAddon() : null;
    if (fit) term.loadAddon(fit);
    term.open(box);
    if (fit) fit.fit();
    window.vmmTerminal = term; // for tests: what the screen shows
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + box.dataset.socket);
    ws.binaryType = "arraybuffer";
    var encoder = new TextEncoder();
    function resize() {
      if (fit) fit.fit();
      if (ws.readyState === 1) ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    }
    ws.onopen = function () { box.dataset.state = "open"; resize(); term.focus(); };
    ws.onmessage = function (e) { term.write(new Uint8Array(e.data)); };
    ws.onclose = function () { box.dataset.state = "closed"; term.write("\r\n\x1b[90m[disconnected]\x1b[0m\r\n"); };
    term.onData(function (data) { if (ws.readyState === 1) ws.send(encoder.encode(data)); });
    window.addEventListener("resize", resize);
  });
})();
