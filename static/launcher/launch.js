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

  if (launch.skipModules) { skipModules(launch.skipModules); }

  var token = askForToken(0);
  var authorization = null;
  window.kheopsLaunch = {
    returnUri: launch.returnUri,
    openedFrom: launch.openedFrom,
    text: text,
    answeredFromPrefetch: [],
    ready: token.then(function (body) {
      return { expiresIn: body.expiresIn, userName: body.userName, userEmail: body.userEmail };
    })
  };
  window.kheopsLaunch.ready.catch(function () {});

  // OHIF 3.13's bundle imports, at start-up, every mode and extension it was built with
  // (its generated pluginImports: `window.modes = list; list.push(name); …`, then
  // appInit(config, extensions, modes) with those very arrays), whatever its configuration
  // says. This script runs before the bundle: the names the launch data lists are left out
  // of those arrays as the bundle fills them, so OHIF neither fetches nor runs them.
  function skipModules(skip) {
    Object.keys(skip).forEach(function (name) {
      var skipped = skip[name];
      Object.defineProperty(window, name, {
        configurable: true,
        enumerable: true,
        get: function () { return undefined; },
        set: function (list) {
          if (Array.isArray(list)) {
            list.push = function () {
              var kept = Array.prototype.filter.call(arguments, function (item) {
                return skipped.indexOf(item) === -1;
              });
              return Array.prototype.push.apply(this, kept);
            };
            var already = list.filter(function (item) { return skipped.indexOf(item) === -1; });
            list.length = 0;
            Array.prototype.push.apply(list, already);
          }
          Object.defineProperty(window, name, {
            configurable: true, enumerable: true, writable: true, value: list
          });
        }
      });
    });
  }

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
  // QIDO of the study, its series list, the metadata of each series, and for a study of
  // one series the frame of the image it draws first) are started once OHIF's bundle has
  // run (DOMContentLoaded; started at once, the work they set off, here and on the server,
  // competed with the bundle's own run: README, issue 20), before OHIF gets to them, and
  // OHIF's own requests for exactly those URLs are answered
  // from them (docs/ohif.md, section on what the viewer asks for first). Only successful
  // answers are kept; any other request, or one made after an answer was used up or went
  // stale, goes to the network as before.
  var PREFETCH_TTL_MS = 60000;
  var DICOM_JSON = "application/dicom+json";
  var CONTENT_TYPE = "content-type";
  var prefetched = {};

  function remember(url, uses, headers, binary) {
    var entry = { uses: uses, until: Date.now() + PREFETCH_TTL_MS, accept: headers.Accept };
    entry.answer = fetch(url, { credentials: "same-origin", headers: headers })
      .then(function (response) {
        if (!response.ok) { return null; }
        return (binary ? response.arrayBuffer() : response.text()).then(function (body) {
          return { status: response.status, url: response.url, text: binary ? null : body,
            body: body, contentType: response.headers.get(CONTENT_TYPE) || DICOM_JSON };
        });
      })
      .catch(function () { return null; });
    prefetched[url] = entry;
    return entry.answer;
  }

  function prefetchStudies(root, studyUids, authorization) {
    var headers = { Accept: DICOM_JSON };
    if (authorization) { headers.Authorization = authorization; }
    var patients = {};
    studyUids.forEach(function (uid) {
      var study = root + "/studies/" + uid;
      remember(root + "/studies?" + launch.prefetch.studyQuery + "&StudyInstanceUID=" + uid,
        launch.prefetch.studyQueryUses, headers).then(function (answer) {
        // The patient's studies (OHIF's study panel asks for them before the series'
        // metadata), when the Patient ID reads the same in a URL however it is encoded.
        if (!launch.prefetch.patientStudies) { return; }
        var found = [];
        try { found = answer ? JSON.parse(answer.text) : []; } catch { found = []; }
        var patient = Array.isArray(found) && found.length === 1 ? first(found[0], "00100020") : null;
        if (typeof patient !== "string" || !/^[A-Za-z0-9._~-]{1,64}$/.test(patient) ||
            patients[patient]) { return; }
        patients[patient] = true;
        remember(root + "/studies?00100020=" + patient + "&" + launch.prefetch.studyQuery, 1, headers);
      });
      remember(study + "/series?" + launch.prefetch.seriesQuery, 1, headers).then(function (answer) {
        var series = [];
        try { series = answer ? JSON.parse(answer.text) : []; } catch { series = []; }
        series.slice(0, launch.prefetch.maxSeries).forEach(function (item) {
          var uid = first(item, "0020000E");
          if (!isUid(uid)) { return; }
          var seriesUrl = study + "/series/" + uid;
          remember(seriesUrl + "/metadata", 1, headers).then(function (metadata) {
            // One study of one series: the series OHIF shows is known, and its first image.
            if (!metadata || studyUids.length !== 1 || series.length !== 1) { return; }
            var instance = null;
            try { instance = firstInstance(JSON.parse(metadata.text)); } catch { instance = null; }
            if (instance) {
              var frameHeaders = { Accept: launch.prefetch.frameAccept };
              if (authorization) { frameHeaders.Authorization = authorization; }
              remember(seriesUrl + "/instances/" + instance + "/frames/1", 1, frameHeaders, true);
            }
          });
        });
      });
    });
  }

  function first(item, tag) {
    return item && item[tag] && item[tag].Value ? item[tag].Value[0] : undefined;
  }

  function isUid(value) { return typeof value === "string" && /^[0-9.]+$/.test(value); }

  function numbers(item, tag, count) {
    var list = item && item[tag] && item[tag].Value;
    if (!Array.isArray(list) || list.length !== count) { return null; }
    list = list.map(Number);
    return list.every(isFinite) ? list : null;
  }

  // The SOP Instance UID of the image OHIF 3.13 draws first in a series' stack: its images
  // ordered by InstanceNumber (then SOP Instance UID); when the series can be rebuilt in 3D,
  // by position along the scan axis instead, farthest first (docs/ohif.md). Which of the two
  // applies is OHIF's own judgement: only when both give the same first image is it known.
  // Single-frame images only. null: not known.
  function firstInstance(instances) {
    if (!Array.isArray(instances) || instances.length === 0) { return null; }
    var images = instances.map(function (item) {
      return {
        uid: first(item, "00080018"),
        number: parseInt(first(item, "00200013"), 10) || 0,
        frames: parseInt(first(item, "00280008"), 10) || 1,
        position: numbers(item, "00200032", 3),
        orientation: numbers(item, "00200037", 6)
      };
    });
    if (images.some(function (image) { return !isUid(image.uid) || image.frames !== 1; })) {
      return null;
    }
    images.sort(function (a, b) {
      return a.number - b.number || (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0);
    });
    if (images.length > 1 && images[0].number === images[1].number) { return null; }
    var reference = images[0];
    var byPosition = reference;
    var o = reference.orientation, p = reference.position;
    var positioned = p && o && images.every(function (image) {
      return image.position && image.orientation &&
        image.orientation.every(function (v, i) { return Math.abs(v - o[i]) < 1e-3; });
    });
    if (positioned) {
      var normal = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
      var farthest = 0;
      images.forEach(function (image) {
        var d = normal[0] * (image.position[0] - p[0]) + normal[1] * (image.position[1] - p[1]) +
          normal[2] * (image.position[2] - p[2]);
        if (d > farthest) { farthest = d; byPosition = image; }
      });
    }
    return byPosition === reference ? reference.uid : null;
  }

  function take(url, accept) {
    var entry = prefetched[url];
    if (!entry || accept !== entry.accept) { return null; }
    entry.uses -= 1;
    if (entry.uses <= 0) { delete prefetched[url]; }
    return Date.now() < entry.until ? entry.answer : null;
  }

  // Which requests of OHIF's were answered so (the browser tests read it).
  function answered(url) { window.kheopsLaunch.answeredFromPrefetch.push(url); }

  // OHIF's DICOMweb client (dicomweb-client) uses XMLHttpRequest: a GET for a prefetched URL
  // waits for that answer instead of the network, and gets it as an XMLHttpRequest would.
  // Aborted (or opened again) while it waits, it gets nothing more, as a request in flight.
  var XHR_STATE = ["readyState", "status", "statusText", "responseURL", "response", "responseText",
    "getResponseHeader", "getAllResponseHeaders"];

  function own(request, name, value) {
    Object.defineProperty(request, name, { configurable: true, value: value });
  }

  function forget(request) {  // the request's own state again (what `deliver` set goes)
    request.kheopsOhifWaiting = null;
    XHR_STATE.forEach(function (name) { delete request[name]; });
  }

  function answerFromPrefetch() {
    var proto = XMLHttpRequest.prototype;
    var open = proto.open, setRequestHeader = proto.setRequestHeader, send = proto.send;
    var abort = proto.abort;
    proto.open = function (method, url) {
      forget(this);
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
      var waiting = request.kheopsOhifWaiting = {};
      answer.then(function (got) {
        if (request.kheopsOhifWaiting !== waiting) { return; }  // aborted, or opened again
        request.kheopsOhifWaiting = null;
        try {
          if (got) { deliver(request, got); answered(request.kheopsOhifUrl); return; }
        } catch {
          // an answer OHIF could not have read: let it ask the server itself
        }
        send.apply(request, args);
      });
    };
    proto.abort = function () {
      if (!this.kheopsOhifWaiting) { return abort.apply(this, arguments); }
      // As the browser aborts a request in flight: done (status 0), its events, then unsent.
      forget(this);
      own(this, "readyState", 4);
      own(this, "status", 0);
      this.dispatchEvent(new Event("readystatechange"));
      this.dispatchEvent(new ProgressEvent("abort"));
      this.dispatchEvent(new ProgressEvent("loadend"));
      own(this, "readyState", 0);
    };
  }

  function deliver(request, got) {
    var type = request.responseType;
    var body = got.text;
    if (got.text === null) {  // a frame: bytes
      if (type !== "arraybuffer") { throw new TypeError("binary"); }
      body = got.body;
    } else if (type === "json") {
      body = JSON.parse(got.text);
    } else if (type === "arraybuffer") {
      body = new TextEncoder().encode(got.text).buffer;
    }
    own(request, "readyState", 4);
    own(request, "status", got.status);
    own(request, "statusText", "OK");
    own(request, "responseURL", got.url);
    own(request, "response", body);
    if (type === "" || type === "text") { own(request, "responseText", got.text); }
    own(request, "getResponseHeader", function (name) {
      return String(name).toLowerCase() === CONTENT_TYPE ? got.contentType : null;
    });
    own(request, "getAllResponseHeaders", function () {
      return CONTENT_TYPE + ": " + got.contentType + "\r\n";
    });
    ["readystatechange", "load", "loadend"].forEach(function (type) {
      request.dispatchEvent(type === "readystatechange" ? new Event(type) : new ProgressEvent(type));
    });
  }

  // OHIF's image loader fetches frames with `fetch`: a GET for a prefetched frame (same URL,
  // same Accept) gets that answer as a Response; anything else goes to the network. Its
  // signal is heeded as the network's fetch heeds it (its abort rejects the promise).
  function answerFetchFromPrefetch() {
    var networkFetch = window.fetch;
    window.fetch = function (input, init) {
      var args = arguments;
      var method = (init && init.method) || "GET";
      var signal = init && init.signal;
      var answer = null;
      if (typeof input === "string" && String(method).toUpperCase() === "GET" &&
          !(signal && signal.aborted)) {
        answer = take(new URL(input, location.href).href, new Headers(init && init.headers).get("accept"));
      }
      if (!answer) { return networkFetch.apply(this, args); }
      var self = this;
      return new Promise(function (resolve, reject) {
        function aborted() { reject(signal.reason); }
        if (signal) { signal.addEventListener("abort", aborted, { once: true }); }
        answer.then(function (got) {
          if (signal) { signal.removeEventListener("abort", aborted); }
          if (signal && signal.aborted) { return; }
          if (!got) { resolve(networkFetch.apply(self, args)); return; }
          answered(new URL(input, location.href).href);
          var headers = {};
          headers[CONTENT_TYPE] = got.contentType;
          resolve(new Response(got.body, { status: got.status, headers: headers }));
        });
      });
    };
  }

  var config = launch.config;
  var dicomwebRoot = config.dataSources[0].configuration.wadoRoot;
  if (launch.prefetch) {
    answerFromPrefetch();
    answerFetchFromPrefetch();
    document.addEventListener("DOMContentLoaded", function () {
      if (launch.prefetch.relayed) {
        prefetchStudies(dicomwebRoot, launch.prefetch.studies, null);
      } else {
        token.then(function (body) {
          if (body.authorization) { prefetchStudies(dicomwebRoot, launch.prefetch.studies, body.authorization); }
        }, function () {});
      }
    }, { once: true });
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
