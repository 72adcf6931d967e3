/* kheops-ohif: shows how long the KHEOPS access lasts, and what to do once it has expired.
 * The server gives the remaining seconds with the token (window.kheopsLaunch.ready);
 * counting from there with the monotonic clock makes the user's wall clock irrelevant. */
(function () {
  "use strict";
  var launch = window.kheopsLaunch;
  if (!launch || !launch.ready) { return; }
  launch.ready.then(function (access) {
    if (typeof access.expiresIn === "number") { show(access.expiresIn, performance.now()); }
  }, function () {});

  function show(expiresIn, startedAt) {
    var WARN_SECONDS = 300;
    var banner = document.createElement("div");
    banner.id = "kheops-ohif-banner";
    banner.setAttribute("role", "status");
    banner.hidden = true;
    var text = document.createElement("span");
    banner.appendChild(text);
    var link = null;
    if (launch.returnUri) {
      link = document.createElement("a");
      link.href = launch.returnUri;
      link.rel = "noreferrer";
      link.textContent = "Open again from KHEOPS";
      link.hidden = true;
      banner.appendChild(link);
    }
    document.body.appendChild(banner);

    function secondsLeft() {
      return Math.max(0, Math.round(expiresIn - (performance.now() - startedAt) / 1000));
    }
    function format(seconds) {
      var m = Math.floor(seconds / 60), s = seconds % 60;
      return m + ":" + (s < 10 ? "0" : "") + s;
    }
    function update() {
      var left = secondsLeft();
      if (left <= 0) {
        banner.hidden = false;
        banner.className = "expired";
        text.textContent = "Your access to this study has expired: images and saving no longer work.";
        if (link) { link.hidden = false; }
        return false;
      }
      if (left <= WARN_SECONDS) {
        banner.hidden = false;
        text.textContent = "Access to this study ends in " + format(left) + ".";
        if (link) { link.hidden = false; }
      }
      return true;
    }
    if (update()) {
      var timer = setInterval(function () { if (!update()) { clearInterval(timer); } }, 1000);
    }
  }
})();
