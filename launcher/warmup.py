"""Relay mode: the study's first answers asked of KHEOPS before the viewer asks for them.

When a relayed viewer opens, OHIF boots for a second or more (seconds on a cold cache)
before its first DICOMweb request, then walks a chain where each answer is needed for the
next: the study (QIDO-RS), its series (QIDO-RS), each series' metadata (WADO-RS), and only
then the images. The server knows the study at launch. As soon as a relayed grant is ready
(its code exchanged, when the viewer's script asks for its token), the process asks KHEOPS
for those answers (STUDY_SEARCH, SERIES_SEARCH, SERIES_METADATA: exactly as OHIF asks) and
keeps them; when the viewer's request arrives, it is answered from memory, or joins the
request already on its way.

Each server process keeps its own answers, and the browser's connections reach any of them:
a warm-up starts in the process that answered the token request, and in each process the
first read of that viewer reaches (it then joins the warm-up's request for what it asks).
So KHEOPS is asked for a study's first answers once more by each process the viewer's
connections reach that ends up not answering them (with 2 processes, at most once more).

- Each kept answer is handed out for REPEAT_SECONDS after it was first asked for (OHIF asks
  for the study twice in a row), then forgotten, so that every later request (a list of
  series after a report was saved, say) goes to KHEOPS.
  Unused answers are forgotten after KEEP_SECONDS, and when a report is uploaded through
  this process.
- Only what a plain request would have got: a GET with the same path and query, no
  conditional or range header, an Accept that takes DICOM JSON; the answers are those of
  KHEOPS to this grant's own token. Only 200 answers of at most MAX_ANSWER_BYTES are kept,
  at most MAX_BYTES in all per process; anything else is simply asked of KHEOPS again.
- A warm-up happens once per grant and process (WARMED_KEPT grants remembered).

The requests follow the installed OHIF (3.13: its DICOMweb data source with
`qidoSupportsIncludeField`); when OHIF asks otherwise, nothing matches and the relay works
as without warm-up. An answer from here says `warm` in its Server-Timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings

from launcher import kheops, relay, services

logger = logging.getLogger(__name__)

# What OHIF 3.13 asks first, in order ({study} and {series} are UIDs), as it writes them.
STUDY_SEARCH = (
    "studies?limit=101&offset=0&fuzzymatching=false"
    "&includefield=00081030%2C00080060%2C00080090%2C00100030&StudyInstanceUID={study}"
)
SERIES_SEARCH = "studies/{study}/series?includefield=00080021%2C00080031%2C0008103E%2C00200011"
SERIES_METADATA = "studies/{study}/series/{series}/metadata"
DICOM_JSON = "application/dicom+json"

KEEP_SECONDS = 30.0
REPEAT_SECONDS = 2.0
MAX_SERIES = 8  # metadata asked for at most this many series of a study
MAX_ANSWER_BYTES = 8 * 1024 * 1024
MAX_BYTES = 64 * 1024 * 1024
WARMED_KEPT = 4096


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Grant:
    """The answers being fetched or kept for one grant in this process."""

    started: float
    answers: dict[str, asyncio.Future[Answer | None]] = field(default_factory=dict)
    handed_out: dict[str, float] = field(default_factory=dict)  # request: when first


class Warmup:
    """This process's warm answers (one per process: `WARMUP`)."""

    def __init__(self) -> None:
        self.enabled = False  # set by launcher.serving.Application.prepare
        self._grants: OrderedDict[tuple[str, str], _Grant] = OrderedDict()
        self._warmed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._bytes = 0
        self.answered = 0  # requests answered from here, for the bench and the tests

    def start(self, grant: services.ViewerGrant, browser_key: str) -> None:
        """Ask KHEOPS for the viewer's first answers now, once per grant and process."""
        if not (self.enabled and settings.DICOMWEB_RELAY_WARMUP and grant.relayed):
            return
        key = (grant.launch_id, services.key_hash(browser_key))
        if key in self._warmed:
            return
        self._warmed[key] = None
        while len(self._warmed) > WARMED_KEPT:
            self._warmed.popitem(last=False)
        self._forget_old()
        warm = _Grant(time.monotonic())
        self._grants[key] = warm
        # The searches are on their way at once: a request for one of them arriving now
        # (the read that started this, say) joins it instead of asking KHEOPS again.
        searches = [
            (
                self._fetch(grant, warm, STUDY_SEARCH.format(study=study)),
                self._fetch(grant, warm, SERIES_SEARCH.format(study=study)),
            )
            for study in grant.study_uids
        ]
        task = asyncio.get_running_loop().create_task(self._fetch_metadata(grant, warm, searches))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(
        self,
        launch_id: str,
        browser_key: str,
        target: relay.Target,
        headers: Mapping[str, str],
    ) -> Answer | None:
        """The kept answer to this read, waited for if on its way; None: ask KHEOPS."""
        if not self._grants or not _plain(target, headers):
            return None
        key = (launch_id, services.key_hash(browser_key))
        warm = self._grants.get(key)
        if warm is None:
            return None
        if time.monotonic() - warm.started > KEEP_SECONDS:
            self._drop(key)
            return None
        request = target.path + ("?" + target.query if target.query else "")
        future = warm.answers.get(request)
        if future is None:
            return None
        try:
            answer = await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # this request was cancelled (its browser went away)
            return None  # the warm-up was (its grant forgotten)
        except Exception:
            return None
        if answer is None:
            return None
        # Handed out: the same request again within REPEAT_SECONDS gets it too (OHIF asks
        # for the study twice in a row); after that, it goes to KHEOPS.
        now = time.monotonic()
        first = warm.handed_out.setdefault(request, now)
        if now - first > REPEAT_SECONDS:
            if warm.answers.get(request) is future:
                del warm.answers[request]
                self._bytes -= len(answer.body)
            return None
        self.answered += 1
        return answer

    def forget(self, launch_id: str) -> None:
        """Forget what is kept for a launch (a report was uploaded: answers would be stale)."""
        for key in [key for key in self._grants if key[0] == launch_id]:
            self._drop(key)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._grants):
            self._drop(key)
        self._warmed.clear()

    # --- fetching ----------------------------------------------------------------------------

    async def _fetch_metadata(
        self,
        grant: services.ViewerGrant,
        warm: _Grant,
        searches: list[tuple[asyncio.Future[Answer | None], asyncio.Future[Answer | None]]],
    ) -> None:
        """Each series' metadata, once the study's list of series has come."""
        try:
            for (_, series_search), study in zip(searches, grant.study_uids, strict=True):
                await asyncio.wait((series_search,))
                for series in _series_uids(series_search)[:MAX_SERIES]:
                    self._fetch(grant, warm, SERIES_METADATA.format(study=study, series=series))
        except Exception:  # a warm-up is an optimisation: it never breaks anything
            logger.warning("relay warm-up of launch %s failed", grant.launch_id, exc_info=True)

    def _fetch(
        self, grant: services.ViewerGrant, warm: _Grant, request: str
    ) -> asyncio.Future[Answer | None]:
        future: asyncio.Future[Answer | None] = asyncio.ensure_future(self._get(grant, request))
        warm.answers[request] = future
        future.add_done_callback(self._count)
        return future

    def _count(self, future: asyncio.Future[Answer | None]) -> None:
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            self._bytes += len(future.result().body)  # type: ignore[union-attr]

    async def _get(self, grant: services.ViewerGrant, request: str) -> Answer | None:
        url = grant.dicomweb_endpoint.rstrip("/") + "/" + request
        headers = relay.upstream_headers({"accept": DICOM_JSON}, grant.access_token, upload=False)
        try:
            upstream = await kheops.open_dicomweb(
                services.kheops_client(), "GET", url, headers=headers
            )
        except kheops.KheopsUnavailable:
            return None
        if upstream.status_code != 200:
            await upstream.aclose()
            return None
        body = bytearray()
        pieces = kheops.raw_body(upstream)
        try:
            async for piece in pieces:
                body += piece
                if len(body) > MAX_ANSWER_BYTES or self._bytes + len(body) > MAX_BYTES:
                    return None
        finally:
            await pieces.aclose()  # closes KHEOPS's answer
        return Answer(200, relay.downstream_headers(upstream.headers), bytes(body))

    # --- bookkeeping -------------------------------------------------------------------------

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key, warm in list(self._grants.items()):
            if now - warm.started > KEEP_SECONDS:
                self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        warm = self._grants.pop(key, None)
        if warm is None:
            return
        for future in warm.answers.values():
            if not future.done():
                future.cancel()
            elif not future.cancelled() and future.exception() is None and future.result():
                self._bytes -= len(future.result().body)  # type: ignore[union-attr]


def _plain(target: relay.Target, headers: Mapping[str, str]) -> bool:
    """Whether a kept answer is what KHEOPS would give this request."""
    if target.method != "GET" or any(
        name in headers
        for name in ("range", "if-none-match", "if-modified-since", "if-match", "if-range")
    ):
        return False
    accept = headers.get("accept", "*/*")
    return DICOM_JSON in accept or "*/*" in accept


def _series_uids(answer: asyncio.Future[Answer | None]) -> list[str]:
    if answer.cancelled() or answer.exception() is not None:
        return []
    result = answer.result()
    if result is None:
        return []
    try:
        found = json.loads(result.body)
    except ValueError:
        return []
    uids = []
    for series in found if isinstance(found, list) else []:
        value = series.get("0020000E", {}).get("Value", []) if isinstance(series, dict) else []
        if value and isinstance(value[0], str) and relay.UID.match(value[0]):
            uids.append(value[0])
    return uids


WARMUP = Warmup()
