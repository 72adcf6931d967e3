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

  // The study is known at launch: the first DICOMweb requests OHIF makes for it (the
  // QIDO of the study, its series list, the metadata of each series) are started here,
  // while OHIF still loads, and OHIF's own requests for exactly those URLs are answered
  // from them (docs/ohif.md, section on what the viewer asks for first). Only successful
  // answers are kept; any other request, or one made after an answer was used up or went
  // stale, goes to the network as before.
  var PREFETCH_TTL_MS = 60000;
  var DICOM_JSON = "application/dicom+json";
  var CONTENT_TYPE = "content-type";
  var prefetched = {};

  function remember(url, uses, headers) {
    var entry = { uses: uses, until: Date.now() + PREFETCH_TTL_MS };
    entry.answer = fetch(url, { credentials: "same-origin", headers: headers })
      .then(function (response) {
        if (!response.ok) { return null; }
        return response.text().then(function (text) {
          return { status: response.status, url: response.url, text: text,
            contentType: response.headers.get(CONTENT_TYPE) || DICOM_JSON };
        });
      })
      .catch(function () { return null; });
    prefetched[url] = entry;
    return entry.answer;
  }

  function prefetchStudies(root, studyUids, authorization) {
    var headers = { Accept: DICOM_JSON };
    if (authorization) { headers.Authorization = authorization; }
    studyUids.forEach(function (uid) {
      var study = root + "/studies/" + uid;
      remember(root + "/studies?" + launch.prefetch.studyQuery + "&StudyInstanceUID=" + uid,
        launch.prefetch.studyQueryUses, headers);
      remember(study + "/series?" + launch.prefetch.seriesQuery, 1, headers).then(function (answer) {
        var series = [];
        try { series = answer ? JSON.parse(answer.text) : []; } catch { series = []; }
        series.slice(0, launch.prefetch.maxSeries).forEach(function (item) {
          var uid = item["0020000E"] && item["0020000E"].Value && item["0020000E"].Value[0];
          if (typeof uid === "string" && /^[0-9.]+$/.test(uid)) {
            remember(study + "/series/" + uid + "/metadata", 1, headers);
          }
        });
      });
    });
  }

  function take(url, accept) {
    var entry = prefetched[url];
    if (!entry || accept !== DICOM_JSON) { return null; }
    entry.uses -= 1;
    if (entry.uses <= 0) { delete prefetched[url]; }
    return Date.now() < entry.until ? entry.answer : null;
  }

  // OHIF's DICOMweb client (dicomweb-client) uses XMLHttpRequest: a GET for a prefetched URL
  // waits for that answer instead of the network, and gets it as an XMLHttpRequest would.
  function answerFromPrefetch() {
    var proto = XMLHttpRequest.prototype;
    var open = proto.open, setRequestHeader = proto.setRequestHeader, send = proto.send;
    proto.open = function (method, url) {
      this.kheopsOhifUrl = String(method).toUpperCase() === "GET"
        ? new URL(url, location.href).href : null;
      this.kheopsOhifAccept = null;
      return open.apply(this, arguments);
    };
    proto.setRequestHeader = function (name, value) {
      if (String(name).toLowerCase() === "accept") { this.kheopsOhifAccept = value; }
      return setRequestHeader.apply(this, arguments);
    };
    proto.send = function () {
      var request = this, args = arguments;
      var answer = request.kheopsOhifUrl && take(request.kheopsOhifUrl, request.kheopsOhifAccept);
      if (!answer) { return send.apply(request, args); }
      answer.then(function (got) {
        try {
          if (got) { deliver(request, got); return; }
        } catch {
          // an answer OHIF could not have read: let it ask the server itself
        }
        send.apply(request, args);
      });
    };
  }

  function deliver(request, got) {
    var type = request.responseType;
    var body = got.text;
    if (type === "json") {
      body = JSON.parse(got.text);
    } else if (type === "arraybuffer") {
      body = new TextEncoder().encode(got.text).buffer;
    }
    var own = function (name, value) {
      Object.defineProperty(request, name, { configurable: true, value: value });
    };
    own("readyState", 4);
    own("status", got.status);
    own("statusText", "OK");
    own("responseURL", got.url);
    own("response", body);
    if (type === "" || type === "text") { own("responseText", got.text); }
    own("getResponseHeader", function (name) {
      return String(name).toLowerCase() === CONTENT_TYPE ? got.contentType : null;
    });
    own("getAllResponseHeaders", function () { return CONTENT_TYPE + ": " + got.contentType + "\r\n"; });
    ["readystatechange", "load", "loadend"].forEach(function (type) {
      request.dispatchEvent(type === "readystatechange" ? new Event(type) : new ProgressEvent(type));
    });
  }

  var config = launch.config;
  var dicomwebRoot = config.dataSources[0].configuration.wadoRoot;
  if (launch.prefetch) {
    answerFromPrefetch();
    if (launch.prefetch.relayed) {
      prefetchStudies(dicomwebRoot, launch.prefetch.studies, null);
    } else {
      token.then(function (body) {
        if (body.authorization) { prefetchStudies(dicomwebRoot, launch.prefetch.studies, body.authorization); }
      }, function () {});
    }
  }
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
