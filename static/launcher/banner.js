/* kheops-ohif: says whom the viewer was opened as and from which album (always, in a
 * corner), how long the KHEOPS access lasts, and what to do once it has expired.
 * The server gives the user and the remaining seconds with the token
 * (window.kheopsLaunch.ready); counting from there with the monotonic clock makes the
 * user's wall clock irrelevant. Its words come translated in the page's data block
 * (window.kheopsLaunch.text, from launch.js). */
(function () {
  "use strict";
  var launch = window.kheopsLaunch;
  if (!launch || !launch.ready) { return; }
  var text = launch.text;
  launch.ready.then(function (access) {
    var startedAt = performance.now();
    withOhif(function () {
      identify(access, launch.openedFrom || {});
      if (typeof access.expiresIn === "number") { show(access.expiresIn, startedAt); }
    });
  }, function () {});

  // The page shows nothing of ours before OHIF has drawn its first image (or, should it
  // draw none, for a few seconds): drawing ours while OHIF starts changes how Chromium
  // interleaves the start of OHIF, and with it how much of the code of OHIF V8 keeps
  // compiled for the next loads (README, section on the click to the first image).
  var SHOWN_AT_THE_LATEST_MS = 5000;
  function withOhif(run) {
    var done = false;
    var timer = setTimeout(go, SHOWN_AT_THE_LATEST_MS);
    document.addEventListener("CORNERSTONE_IMAGE_RENDERED", go, true);
    function go() {
      if (done) { return; }
      done = true;
      clearTimeout(timer);
      document.removeEventListener("CORNERSTONE_IMAGE_RENDERED", go, true);
      run();
    }
  }

  // A launch link is a GET that anyone can send: a clinician opening a link crafted by
  // someone else sees, and saves measurements into, that person's study. This line says
  // whose KHEOPS account and album the viewer is working in.
  function identify(access, from) {
    var who = access.userName || "";
    if (access.userEmail) { who = who ? who + " (" + access.userEmail + ")" : access.userEmail; }
    var lines = [who ? fill(text.openedAs, { who: who }) : text.openedWithoutUser];
    if (from.album && from.server) {
      lines.push(fill(text.fromAlbumOnServer, { album: from.album, server: from.server }));
    } else if (from.album) {
      lines.push(fill(text.fromAlbum, { album: from.album }));
    } else if (from.server) {
      lines.push(fill(text.fromServer, { server: from.server }));
    }
    var identity = document.createElement("div");
    identity.id = "kheops-ohif-identity";
    identity.setAttribute("role", "note");
    identity.title = lines.join(", ");
    lines.forEach(function (line) {
      var span = document.createElement("span");
      span.textContent = line;
      identity.appendChild(span);
    });
    document.body.appendChild(identity);
  }

  // "Opened as {who}" with {who} replaced (a translation may move the words around).
  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (whole, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? values[name] : whole;
    });
  }

  function show(expiresIn, startedAt) {
    var WARN_SECONDS = 300;
    var banner = document.createElement("div");
    banner.id = "kheops-ohif-banner";
    banner.setAttribute("role", "status");
    banner.hidden = true;
    var message = document.createElement("span");
    banner.appendChild(message);
    var link = null;
    if (launch.returnUri) {
      link = document.createElement("a");
      link.href = launch.returnUri;
      link.rel = "noreferrer";
      link.textContent = text.openAgain;
      link.hidden = true;
      banner.appendChild(link);
    }
    document.body.appendChild(banner);

    // The relay refused a request (401: the grant expired or failed; launch.js): over now.
    var ended = Boolean(launch.ended);
    window.addEventListener("kheops-ohif:access-ended", function () {
      if (!ended) { ended = true; update(); }
    });
    function secondsLeft() {
      if (ended) { return 0; }
      return Math.max(0, Math.round(expiresIn - (performance.now() - startedAt) / 1000));
    }
    function format(seconds) {
      var m = Math.floor(seconds / 60), s = seconds % 60;
      return m + ":" + (s < 10 ? "0" : "") + s;
    }
    // Above every bottom overlay of the viewports (window/level, instance number) that
    // the banner would otherwise cover; CSS places it above the usual ones already.
    function keepClear() {
      var box = banner.getBoundingClientRect();
      var highest = Infinity;
      document.querySelectorAll('[data-cy^="viewport-overlay-bottom"]').forEach(function (overlay) {
        var r = overlay.getBoundingClientRect();
        if (r.width && r.height && r.left < box.right && r.right > box.left) {
          highest = Math.min(highest, r.top);
        }
      });
      if (highest < box.bottom + 8) {
        banner.style.bottom = Math.round(window.innerHeight - highest + 8) + "px";
      }
    }
    function update() {
      var left = secondsLeft();
      if (left <= 0) {
        banner.hidden = false;
        banner.className = "expired";
        message.textContent = text.accessExpired;
        if (link) { link.hidden = false; }
        keepClear();
        return false;
      }
      if (left <= WARN_SECONDS) {
        banner.hidden = false;
        message.textContent = fill(text.accessEndsIn, { time: format(left) });
        if (link) { link.hidden = false; }
        keepClear();
      }
      return true;
    }
    if (update()) {
      var timer = setInterval(function () { if (!update()) { clearInterval(timer); } }, 1000);
    }
  }
})();
