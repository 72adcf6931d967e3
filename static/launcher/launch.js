/* kheops-ohif: starts OHIF on one launch.
 *
 * What is particular to the launch (no secret: the viewer's data source, its token URL, the
 * way back to KHEOPS, the provider's name and logo) is in the page, in
 * <script type="application/json" id="kheops-ohif-launch">, written by the server for this
 * launch and this browser only. This script is the same for every launch (cached for ever);
 * what it and banner.js show is in that block too ("text"), in the page's language.
 *
 * The KHEOPS code is exchanged while OHIF loads: the token is asked for at once, and OHIF
 * waits for it only where it first needs it. The token never enters a URL. In relay mode
 * the answer has no token at all: the data source is this server's same-origin relay, and
 * the browser's cookie is its only credential.
 */
(function () {
  "use strict";

  // A busy or restarting server, or a KHEOPS slow to answer, says so (retryable): ask
  // again after these pauses before telling the user.
  var RETRY_DELAYS_MS = [1000, 2000, 4000];

  var launch = JSON.parse(document.getElementById("kheops-ohif-launch").textContent);
  var text = launch.text;
  var UNABLE = text.cannotOpen;
  window.PUBLIC_URL = launch.publicUrl;
  window.browserImportFunction = function (name) { return import(name); };

  var token = askForToken(0);
  var authorization = null;
  window.kheopsLaunch = {
    returnUri: launch.returnUri,
    openedFrom: launch.openedFrom,
    text: text,
    ready: token.then(function (body) {
      return { expiresIn: body.expiresIn, userName: body.userName, userEmail: body.userEmail };
    })
  };
  window.kheopsLaunch.ready.catch(function () {});

  function askForToken(attempt) {
    return fetch(launch.tokenUrl, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      return response.json().then(function (body) {
        if (response.ok) { return body; }
        if (body.retryable && attempt < RETRY_DELAYS_MS.length) { return later(attempt); }
        var refused = new Error([body.error, body.advice].filter(Boolean).join(" ") || UNABLE);
        refused.answered = true;
        throw refused;
      });
    }, function (unreachable) {
      if (attempt < RETRY_DELAYS_MS.length) { return later(attempt); }
      throw unreachable;
    });
  }

  function later(attempt) {
    return new Promise(function (resolve) {
      setTimeout(resolve, RETRY_DELAYS_MS[attempt]);
    }).then(function () { return askForToken(attempt + 1); });
  }

  function stop(error) {
    // Our server answered with a reason: the viewer page now shows it, with the way back.
    var key = "kheops-ohif-refused:" + launch.launchId;
    var reloadOnce = false;
    try {  // storage may be off (private modes): then no reload, the message below
      reloadOnce = Boolean(error && error.answered) && !sessionStorage.getItem(key);
      if (reloadOnce) { sessionStorage.setItem(key, "1"); }
    } catch {
      reloadOnce = false;
    }
    if (reloadOnce) {
      location.replace(location.href);
    } else {
      var message = document.createElement("p");
      message.style.cssText = "color:#fff;font:16px sans-serif;padding:2em";
      message.textContent = (error && error.message) || UNABLE;
      if (launch.returnUri) {
        var back = document.createElement("a");
        back.href = launch.returnUri;
        back.rel = "noreferrer";
        back.textContent = " " + text.backToKheops;
        back.style.color = "#7cf";
        message.appendChild(back);
      }
      document.body.replaceChildren(message);
    }
    return new Promise(function () {});  // OHIF goes no further
  }

  // Relay mode: the server answers 401 once the grant has expired or failed (or the
  // browser lost its cookie). The viewer then says so as when the hour is over: banner.js
  // shows its expiry message on this event. OHIF fetches DICOMweb with XMLHttpRequest (and
  // fetch, for some): both are watched for answers from the relay, nothing else changes.
  var ACCESS_ENDED = "kheops-ohif:access-ended";
  function watchRelay(root) {
    var prefix = new URL(root.replace(/\/?$/, "/"), location.href).href;
    function check(url, status) {
      if (status === 401 && String(url).indexOf(prefix) === 0) {
        window.kheopsLaunch.ended = true;
        window.dispatchEvent(new Event(ACCESS_ENDED));
      }
    }
    var open = XMLHttpRequest.prototype.open;
    XMLHttpRequest.prototype.open = function () {
      var request = this;
      if (!request.kheopsOhifWatched) {
        request.kheopsOhifWatched = true;
        // responseURL: absolute, and set whenever an answer (a 401 too) arrived.
        request.addEventListener("loadend", function () {
          check(request.responseURL, request.status);
        });
      }
      return open.apply(request, arguments);
    };
    var originalFetch = window.fetch;
    window.fetch = function () {
      return originalFetch.apply(this, arguments).then(function (response) {
        check(response.url, response.status);
        return response;
      });
    };
  }

  var config = launch.config;
  // OHIF 3.13 takes DICOMweb headers from its user-authentication service only; an
  // extension's preRegistration runs after services exist and before any data source,
  // and OHIF awaits it.
  config.extensions = [{
    id: "kheops-ohif-launch-auth",
    preRegistration: function (args) {
      args.servicesManager.services.userAuthenticationService.setServiceImplementation({
        getAuthorizationHeader: function () { return authorization ? { Authorization: authorization } : {}; }
      });
      // Relay mode: no token in the answer; the server adds it to the same-origin requests.
      return token.then(function (body) {
        authorization = body.authorization || null;
        if (!authorization) { watchRelay(config.dataSources[0].configuration.wadoRoot); }
      }, stop);
    }
  }];

  // White label: the provider's logo (or our neutral mark) and name in OHIF's header,
  // where OHIF 3.13 would draw its own logo. OHIF's header gives it about 240 px.
  var brand = launch.brand;
  config.whiteLabeling = {
    createLogoComponentFn: function (React) {
      return React.createElement("span", {
        "data-cy": "kheops-ohif-brand",
        title: brand.title,
        style: { display: "inline-flex", alignItems: "center", gap: "8px", maxWidth: "236px",
          color: "hsl(var(--foreground, 0 0% 98%))", font: "500 14px/1.2 system-ui, sans-serif" }
      },
      React.createElement("img", { src: brand.logo, alt: "",
        style: { height: "28px", width: "auto", maxWidth: "96px", objectFit: "contain", flex: "none" } }),
      brand.title ? React.createElement("span", {
        style: { overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }
      }, brand.title) : null);
    }
  };
  window.config = config;
})();
